"""The op registry: every op name, its attributes, and how its result type is derived.

Op names of elementwise ops are numpy ufunc names (``add``, ``tanh``, ``greater_equal``), so the
reference kernel of an elementwise op is ``getattr(numpy, name)``. Ops whose result shape is not
a function of their operands (``reshape``, ``broadcast_to``, ``full``, ``iota``, ``constant``,
``astype``, ``relayout``) take it from the declared result type.

`infer` returns the (dtype, shape) an op must have; it raises `ValueError` with a plain message
when the operands do not fit, and the caller (tracer, builder, verifier) adds the location. The
same functions serve global-shape IR and localized IR: `InferContext.localized` says which, and
only collectives (whose local shapes change) and ``constant`` look at it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from math import prod

import numpy as np

from dtensor_compiler.ir.sharding import REDUCE_OPS, MeshShape, Sharding
from dtensor_compiler.ir.types import TensorType, dtype_name, numpy_dtype

Shape = tuple[int, ...]

UNARY_UFUNCS: tuple[str, ...] = (
    "negative", "positive", "exp", "exp2", "expm1", "log", "log2", "log10", "log1p", "tanh",
    "sinh", "cosh", "sin", "cos", "tan", "arcsin", "arccos", "arctan", "arcsinh", "arccosh",
    "arctanh", "sqrt", "cbrt", "square", "reciprocal", "absolute", "fabs", "sign", "floor", "ceil",
    "rint", "trunc", "logical_not", "invert", "isnan", "isinf", "isfinite", "signbit",
    "deg2rad", "rad2deg", "degrees", "radians", "conjugate", "spacing",
)
BINARY_UFUNCS: tuple[str, ...] = (
    "add", "subtract", "multiply", "divide", "floor_divide", "remainder", "fmod", "power",
    "float_power", "maximum", "minimum", "fmax", "fmin", "equal", "not_equal", "less",
    "less_equal", "greater", "greater_equal", "logical_and", "logical_or", "logical_xor",
    "bitwise_and", "bitwise_or", "bitwise_xor", "left_shift", "right_shift", "arctan2", "hypot",
    "copysign", "nextafter", "logaddexp", "logaddexp2", "heaviside", "ldexp", "gcd", "lcm",
)
REDUCTIONS: dict[str, str] = {
    "reduce_sum": "sum", "reduce_max": "max", "reduce_min": "min", "reduce_prod": "prod",
}
COLLECTIVES: tuple[str, ...] = (
    "all_gather", "all_reduce", "reduce_scatter", "all_to_all", "local_slice", "make_partial",
)
"""Ops that change a value's layout."""
LOCAL_LAYOUT_CHANGES: tuple[str, ...] = ("local_slice", "make_partial")
"""The layout changes that move no data between devices: ``local_slice`` keeps this device's
block; ``make_partial`` turns a replicated value into a pending reduction (coordinate 0 keeps
the value, the other devices hold the reduction's identity)."""


@dataclass(frozen=True)
class InferContext:
    mesh: MeshShape
    localized: bool = False


@dataclass(frozen=True)
class OpDef:
    """What the registry knows about one op."""

    name: str
    attrs: tuple[str, ...]
    """Attribute names the op must carry, in printing order."""
    infer: Callable[[Sequence[TensorType], dict, TensorType | None, InferContext],
                    tuple[str, Shape]]
    num_operands: int | None
    """Exact operand count, or None for variadic."""
    has_result: bool = True
    declared_type: bool = False
    """True when the result shape/dtype come from the declared result type."""


OPS: dict[str, OpDef] = {}


def _register(name: str, infer, num_operands: int | None, attrs: tuple[str, ...] = (),
              declared_type: bool = False) -> None:
    OPS[name] = OpDef(name, attrs, infer, num_operands, declared_type=declared_type)


def get(name: str) -> OpDef:
    if name not in OPS:
        raise KeyError(f"unknown op {name!r}")
    return OPS[name]


# ---------------------------------------------------------------------------------------------
# dtype helpers


@functools.cache
def ufunc_result_dtype(ufunc: str, dtypes: tuple[str, ...]) -> str:
    """The result dtype numpy gives `ufunc` on operands of `dtypes` (evaluated on 1-element
    arrays, so it is numpy's own promotion, not a re-implementation of it)."""
    args = [np.ones(1, dtype=numpy_dtype(d)) for d in dtypes]
    with np.errstate(all="ignore"):
        out = getattr(np, ufunc)(*args)
    return dtype_name(out.dtype)


def broadcast_shapes(*shapes: Shape) -> Shape:
    """numpy's broadcasting of `shapes` (written out: ``np.broadcast_shapes`` costs more than
    the rest of inferring a small op)."""
    rank = max((len(s) for s in shapes), default=0)
    out = [1] * rank
    for shape in shapes:
        for i, size in enumerate(shape, rank - len(shape)):
            if size == 1 or size == out[i]:
                continue
            if out[i] != 1:
                raise ValueError("shapes " + ", ".join(str(list(s)) for s in shapes)
                                 + " cannot be broadcast together")
            out[i] = size
    return tuple(out)


def normalize_axis(axis: int, rank: int) -> int:
    if not -rank <= axis < rank:
        raise ValueError(f"axis {axis} is out of bounds for rank {rank}")
    return axis % rank


# ---------------------------------------------------------------------------------------------
# inference functions


def _unary(name: str):
    def infer(ts, attrs, declared, ctx):
        return ufunc_result_dtype(name, (ts[0].dtype,)), ts[0].shape
    return infer


def _binary(name: str):
    def infer(ts, attrs, declared, ctx):
        shape = broadcast_shapes(ts[0].shape, ts[1].shape)
        return ufunc_result_dtype(name, (ts[0].dtype, ts[1].dtype)), shape
    return infer


def _where(ts, attrs, declared, ctx):
    if ts[0].dtype != "bool":
        raise ValueError(f"where condition must be bool, got {ts[0].dtype}")
    shape = broadcast_shapes(ts[0].shape, ts[1].shape, ts[2].shape)
    return ufunc_result_dtype("add", (ts[1].dtype, ts[2].dtype)), shape


def _declared(ts, attrs, declared, ctx):
    if declared is None:
        raise ValueError("this op needs a declared result type")
    return declared.dtype, declared.shape


def _astype(ts, attrs, declared, ctx):
    dtype, shape = _declared(ts, attrs, declared, ctx)
    if shape != ts[0].shape:
        raise ValueError(f"astype cannot change the shape {list(ts[0].shape)} to {list(shape)}")
    return dtype, shape


def _reshape(ts, attrs, declared, ctx):
    dtype, shape = _declared(ts, attrs, declared, ctx)
    if prod(shape) != prod(ts[0].shape):
        raise ValueError(f"cannot reshape {list(ts[0].shape)} into {list(shape)}")
    if dtype != ts[0].dtype:
        raise ValueError(f"reshape cannot change the dtype {ts[0].dtype} to {dtype}")
    return dtype, shape


def _broadcast_to(ts, attrs, declared, ctx):
    dtype, shape = _declared(ts, attrs, declared, ctx)
    if broadcast_shapes(ts[0].shape, shape) != shape:
        raise ValueError(f"cannot broadcast {list(ts[0].shape)} to {list(shape)}")
    return ts[0].dtype, shape


def _relayout(ts, attrs, declared, ctx):
    return ts[0].dtype, ts[0].shape


def matmul_shape(a: Shape, b: Shape) -> Shape:
    if len(a) < 2 or len(b) < 2:
        raise ValueError("matmul operands must have rank >= 2 (the tracer lifts vectors)")
    if a[-1] != b[-2]:
        raise ValueError(f"matmul contracting dims differ: {list(a)} @ {list(b)}")
    batch = broadcast_shapes(a[:-2], b[:-2])
    return batch + (a[-2], b[-1])


def _matmul(ts, attrs, declared, ctx):
    return (ufunc_result_dtype("multiply", (ts[0].dtype, ts[1].dtype)),
            matmul_shape(ts[0].shape, ts[1].shape))


def parse_einsum(spec: str, num_operands: int) -> tuple[list[str], str]:
    """Split an explicit einsum spec ``"ij,jk->ik"`` into operand subscripts and the output."""
    if "->" not in spec or "." in spec:
        raise ValueError(f"einsum spec {spec!r} must be explicit ('->') and without ellipsis")
    lhs, out = spec.replace(" ", "").split("->")
    ins = lhs.split(",")
    if len(ins) != num_operands:
        raise ValueError(f"einsum spec {spec!r} names {len(ins)} operands, got {num_operands}")
    for sub in ins + [out]:
        if not sub.isalpha() and sub:
            raise ValueError(f"einsum subscripts must be letters, got {sub!r}")
    if len(set(out)) != len(out):
        raise ValueError(f"einsum output {out!r} repeats a subscript")
    return ins, out


def _einsum(ts, attrs, declared, ctx):
    ins, out = parse_einsum(attrs["spec"], len(ts))
    sizes: dict[str, int] = {}
    for sub, t in zip(ins, ts):
        if len(sub) != t.rank:
            raise ValueError(f"einsum subscript {sub!r} does not fit rank-{t.rank} operand")
        if len(set(sub)) != len(sub):
            raise ValueError(f"einsum subscript {sub!r} repeats a letter (diagonals unsupported)")
        for c, s in zip(sub, t.shape):
            if sizes.setdefault(c, s) != s:
                raise ValueError(f"einsum letter {c!r} has sizes {sizes[c]} and {s}")
    if any(c not in sizes for c in out):
        raise ValueError(f"einsum output {out!r} names a letter no operand has")
    dtype = ts[0].dtype
    for t in ts[1:]:
        dtype = ufunc_result_dtype("multiply", (dtype, t.dtype))
    return dtype, tuple(sizes[c] for c in out)


def reduced_shape(shape: Shape, axes: tuple[int, ...], keepdims: bool) -> Shape:
    if keepdims:
        return tuple(1 if i in axes else s for i, s in enumerate(shape))
    return tuple(s for i, s in enumerate(shape) if i not in axes)


def _reduce(kind: str):
    def infer(ts, attrs, declared, ctx):
        t = ts[0]
        axes = tuple(attrs["axes"])
        if any(not 0 <= a < t.rank for a in axes) or len(set(axes)) != len(axes):
            raise ValueError(f"bad reduction axes {list(axes)} for rank {t.rank}")
        dtype = _accumulated_dtype(kind, t.dtype) if kind in ("sum", "prod") else t.dtype
        return dtype, reduced_shape(t.shape, axes, bool(attrs["keepdims"]))
    return infer


@functools.cache
def _accumulated_dtype(kind: str, dtype: str) -> str:
    """The dtype numpy's ``sum`` or ``prod`` gives on `dtype` (small ints widen)."""
    fn = np.sum if kind == "sum" else np.prod
    return dtype_name(fn(np.ones(1, numpy_dtype(dtype))).dtype)


def _argreduce(ts, attrs, declared, ctx):
    t = ts[0]
    axis = attrs["axis"]
    if not 0 <= axis < t.rank:
        raise ValueError(f"axis {axis} out of bounds for rank {t.rank}")
    return "i64", reduced_shape(t.shape, (axis,), bool(attrs["keepdims"]))


def _transpose(ts, attrs, declared, ctx):
    perm = tuple(attrs["perm"])
    if sorted(perm) != list(range(ts[0].rank)):
        raise ValueError(f"perm {list(perm)} is not a permutation of rank {ts[0].rank}")
    return ts[0].dtype, tuple(ts[0].shape[p] for p in perm)


def _concatenate(ts, attrs, declared, ctx):
    axis = attrs["axis"]
    first = ts[0]
    if not 0 <= axis < first.rank:
        raise ValueError(f"axis {axis} out of bounds for rank {first.rank}")
    dtype = first.dtype
    for t in ts[1:]:
        if t.rank != first.rank or any(
            a != b for i, (a, b) in enumerate(zip(t.shape, first.shape)) if i != axis
        ):
            raise ValueError(
                f"concatenate operands {list(first.shape)} and {list(t.shape)} differ "
                f"outside axis {axis}"
            )
        dtype = ufunc_result_dtype("add", (dtype, t.dtype))
    total = sum(t.shape[axis] for t in ts)
    return dtype, first.shape[:axis] + (total,) + first.shape[axis + 1:]


def slice_length(start: int, stop: int, step: int) -> int:
    return max(0, (stop - start + step - 1) // step)


def _slice(ts, attrs, declared, ctx):
    t = ts[0]
    start, stop, step = attrs["start"], attrs["stop"], attrs["step"]
    if not len(start) == len(stop) == len(step) == t.rank:
        raise ValueError(f"slice needs {t.rank} starts, stops and steps")
    shape = []
    for s, b, e, k in zip(t.shape, start, stop, step):
        if k <= 0 or not 0 <= b <= s or not b <= e <= s:
            raise ValueError(f"slice {b}:{e}:{k} is out of range for a dim of size {s}")
        shape.append(slice_length(b, e, k))
    return t.dtype, tuple(shape)


def _take(ts, attrs, declared, ctx):
    table, idx = ts
    axis = attrs["axis"]
    if not 0 <= axis < table.rank:
        raise ValueError(f"axis {axis} out of bounds for rank {table.rank}")
    if not idx.dtype.startswith(("i", "u")):
        raise ValueError(f"take indices must be integers, got {idx.dtype}")
    return table.dtype, table.shape[:axis] + idx.shape + table.shape[axis + 1:]


def _constant(ts, attrs, declared, ctx):
    value = attrs["value"]
    if not isinstance(value, np.ndarray):
        raise ValueError("constant value must be an array")
    dtype, shape = _declared(ts, attrs, declared, ctx)
    if dtype_name(value.dtype) != dtype:
        raise ValueError(f"constant value has dtype {dtype_name(value.dtype)}, type says {dtype}")
    expected = shape
    if ctx.localized and declared is not None and declared.sharding is not None:
        expected = declared.sharding.global_shape(shape, ctx.mesh)
    if tuple(value.shape) != expected:
        raise ValueError(f"constant value has shape {list(value.shape)}, type says {list(shape)}")
    return dtype, shape


def _full(ts, attrs, declared, ctx):
    return _declared(ts, attrs, declared, ctx)


def _iota(ts, attrs, declared, ctx):
    dtype, shape = _declared(ts, attrs, declared, ctx)
    if not 0 <= attrs["dimension"] < len(shape):
        raise ValueError(f"iota dimension {attrs['dimension']} out of bounds for {list(shape)}")
    return dtype, shape


# ---------------------------------------------------------------------------------------------
# collectives: how they change a layout, and (in localized IR) a local shape


def apply_collective(name: str, attrs: dict, src: Sharding) -> Sharding:
    """The sharding a collective produces from `src`. Raises ValueError if it does not apply."""
    md = tuple(attrs["mesh_dims"])
    dims = [tuple(d) for d in src.dims]
    partial = src.partial_map
    if not md:
        raise ValueError(f"{name} needs at least one mesh dim")
    if name in ("all_reduce", "reduce_scatter"):
        op = attrs["op"]
        for m in md:
            if partial.get(m) != op:
                raise ValueError(f"{name} over {m!r} needs a pending {op} on {m!r}, "
                                 f"layout is {src.text()}")
            del partial[m]
        if name == "reduce_scatter":
            dims[attrs["axis"]] = dims[attrs["axis"]] + md
        return Sharding(tuple(dims), tuple(partial.items()))
    if name in ("all_gather", "all_to_all"):
        axis = attrs["axis"] if name == "all_gather" else attrs["concat_axis"]
        if dims[axis][len(dims[axis]) - len(md):] != md:
            raise ValueError(f"{name} over {list(md)} needs dim {axis} to end with them, "
                             f"layout is {src.text()}")
        dims[axis] = dims[axis][: len(dims[axis]) - len(md)]
        if name == "all_to_all":
            dims[attrs["split_axis"]] = dims[attrs["split_axis"]] + md
        return Sharding(tuple(dims), tuple(partial.items()))
    if name == "make_partial":
        op = attrs["op"]
        if op not in REDUCE_OPS:
            raise ValueError(f"make_partial: unknown reduction {op!r}")
        used = src.used_mesh_dims()
        if any(m in used for m in md):
            raise ValueError(f"make_partial over {list(md)}: already used in {src.text()}")
        return Sharding(tuple(dims), tuple(partial.items()) + tuple((m, op) for m in md))
    if name == "local_slice":
        used = src.used_mesh_dims()
        if any(m in used for m in md):
            raise ValueError(f"local_slice over {list(md)}: already used in {src.text()}")
        dims[attrs["axis"]] = dims[attrs["axis"]] + md
        return Sharding(tuple(dims), tuple(partial.items()))
    raise ValueError(f"{name} is not a collective")


def _collective(name: str):
    def infer(ts, attrs, declared, ctx):
        t = ts[0]
        for m in attrs["mesh_dims"]:
            if m not in ctx.mesh.names:
                raise ValueError(f"mesh dim {m!r} is not in {ctx.mesh.text()}")
        if not ctx.localized:
            return t.dtype, t.shape
        n = ctx.mesh.group_size(tuple(attrs["mesh_dims"]))
        shape = list(t.shape)
        if name == "all_gather":
            shape[attrs["axis"]] *= n
        elif name in ("reduce_scatter", "local_slice"):
            shape[attrs["axis"]] //= n
        elif name == "all_to_all":
            shape[attrs["concat_axis"]] *= n
            shape[attrs["split_axis"]] //= n
        return t.dtype, tuple(shape)
    return infer


# ---------------------------------------------------------------------------------------------
# the registry

for _n in UNARY_UFUNCS:
    _register(_n, _unary(_n), 1)
for _n in BINARY_UFUNCS:
    _register(_n, _binary(_n), 2)
for _n, _k in REDUCTIONS.items():
    _register(_n, _reduce(_k), 1, ("axes", "keepdims"))
_register("where", _where, 3)
_register("astype", _astype, 1, declared_type=True)
_register("matmul", _matmul, 2)
_register("einsum", _einsum, None, ("spec",))
_register("argmax", _argreduce, 1, ("axis", "keepdims"))
_register("argmin", _argreduce, 1, ("axis", "keepdims"))
_register("reshape", _reshape, 1, declared_type=True)
_register("transpose", _transpose, 1, ("perm",))
_register("broadcast_to", _broadcast_to, 1, declared_type=True)
_register("concatenate", _concatenate, None, ("axis",))
_register("slice", _slice, 1, ("start", "stop", "step"))
_register("take", _take, 2, ("axis",))
_register("constant", _constant, 0, ("value",), declared_type=True)
_register("full", _full, 0, ("value",), declared_type=True)
_register("iota", _iota, 0, ("dimension",), declared_type=True)
_register("relayout", _relayout, 1)
_register("all_gather", _collective("all_gather"), 1, ("mesh_dims", "axis"))
_register("all_reduce", _collective("all_reduce"), 1, ("mesh_dims", "op"))
_register("reduce_scatter", _collective("reduce_scatter"), 1, ("mesh_dims", "op", "axis"))
_register("all_to_all", _collective("all_to_all"), 1, ("mesh_dims", "split_axis", "concat_axis"))
_register("local_slice", _collective("local_slice"), 1, ("mesh_dims", "axis"))
_register("make_partial", _collective("make_partial"), 1, ("mesh_dims", "op"))

assert set(REDUCTIONS.values()) <= set(REDUCE_OPS)
