"""Torch kernels for the ops outside the triton backend's templates, on the same device.

The triton backend generates kernels for fused elementwise chains, row reductions and
float contractions (`triton_codegen`). The other ops that compute (gathers, scatter-adds,
sorts, scans, reductions over other axes, contractions of integers, concatenation, flips,
the padding mask, real and imaginary parts) run as torch operations on `DEVICE`, through
the kernels of `TORCH_KERNELS`: the numpy backend's table with these replaced. Like the
numpy kernels they take and give stacked numpy arrays (`ctx.mesh_axes` leading mesh
axes), handed to torch without a copy on the CPU (`triton_device`).

The elementwise ops of a body the templates do not cover run here too, one torch op each,
where torch computes them as numpy does (`_TORCH_UFUNCS`).

`runner` says what computes an op outside a kernel: ``torch``; ``numpy`` for an op torch
does not compute as numpy does (`_refuses_ufunc`, a sort of complex numbers, an integer
matmul on a GPU, whose torch has no integer GEMM); None for an op that computes nothing
when the program runs (a view, a value built once, a collective, checkpoint IO). The
backend lists every op with its runner (`kernel_runs`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import numpy as np
import torch

from dtensor_compiler.ir import geometry, opdef
from dtensor_compiler.ir.attrs import int_attr, str_attr
from dtensor_compiler.ir.core import Operation, Value
from dtensor_compiler.ir.ops import (
    contractions,
    elementwise,
    indexing,
    padding,
    reductions,
    shape,
)
from dtensor_compiler.ir.ops.contractions import matmul_letters
from dtensor_compiler.ir.sharding import ReduceOp
from dtensor_compiler.ir.types import is_floating, numpy_dtype
from dtensor_compiler.runtime.executor import ExecContext, Kernel, KernelFn
from dtensor_compiler.runtime.kernels_numpy import (
    NUMPY_KERNELS,
    align_local_rank,
    mask_fill,
    padding_regions,
)
from dtensor_compiler.runtime.triton_device import DEVICE, TORCH_DTYPES, to_device, to_host

TORCH_KERNELS = NUMPY_KERNELS.extended("torch")

_REFUSED: dict[str, Callable[[Operation], bool]] = {}
"""Op name -> whether torch does not compute that op (its numpy kernel runs instead)."""

_VIEWS = frozenset(d.name for d in (shape.RESHAPE, shape.TRANSPOSE, shape.BROADCAST_TO,
                                    indexing.SLICE, elementwise.STOP_GRADIENT))
"""Ops whose result is a strided view of their operand (or the operand): nothing runs."""


def runner(op: Operation) -> str | None:
    """What computes `op` when it runs outside a kernel (see the module docstring)."""
    definition = opdef.lookup(op.name)
    if (op.name in _VIEWS or definition.collective is not None or not definition.pure
            or not op.operands):
        return None
    refused = _REFUSED.get(op.name)
    if refused is None:
        return "numpy"
    dtypes = [numpy_dtype(v.type.dtype).name for v in (*op.operands, *op.results)]
    return "numpy" if refused(op) or any(d not in TORCH_DTYPES for d in dtypes) else "torch"


def _kind(value: Value) -> str:
    """`value`'s numpy dtype kind, ``f`` for ml_dtypes' floats too."""
    dtype = numpy_dtype(value.type.dtype)
    return "f" if is_floating(dtype) else dtype.kind


def _kinds(op: Operation) -> set[str]:
    """The dtype kinds (`_kind`) of `op`'s operands and results."""
    return {_kind(v) for v in (*op.operands, *op.results)}


def _torch(*definitions: opdef.OpDef, refuses: Callable[[Operation], bool] = lambda op: False
           ) -> Callable[[Kernel], Kernel]:
    """Decorator: the torch kernel of `definitions`, where `runner` says torch computes
    the op (their numpy kernel elsewhere); `refuses(op)` says whether torch does not
    compute this one as numpy does."""
    def add(build: Kernel) -> Kernel:
        def kernel(op: Operation, ctx: ExecContext) -> KernelFn:
            if runner(op) == "torch":
                return build(op, ctx)
            numpy_kernel = NUMPY_KERNELS.get(op.name)
            assert numpy_kernel is not None
            return numpy_kernel(op, ctx)
        for definition in definitions:
            _REFUSED[definition.name] = refuses
        TORCH_KERNELS.override(*definitions)(kernel)
        return build
    return add


def _axes(op: Operation, ctx: ExecContext) -> tuple[int, ...]:
    local = op.attrs["axes"]
    assert isinstance(local, tuple)
    return tuple(ctx.mesh_axes + a for a in local)


def _result_dtype(op: Operation) -> tuple[np.dtype, torch.dtype]:
    dtype = numpy_dtype(op.type.dtype)
    return dtype, TORCH_DTYPES[dtype.name]


def _unary(op: Operation, compute: Callable[[torch.Tensor], torch.Tensor]) -> KernelFn:
    dtype, _ = _result_dtype(op)
    return lambda x: to_host(compute(to_device(np.asarray(x))), dtype)


def _has_complex(op: Operation) -> bool:
    """Whether `op` has complex operands or results (torch orders no complex numbers)."""
    return "c" in _kinds(op)


_FLOAT_MATH = {
    "exp": "exp", "exp2": "exp2", "expm1": "expm1", "log": "log", "log2": "log2",
    "log10": "log10", "log1p": "log1p", "tanh": "tanh", "sinh": "sinh", "cosh": "cosh",
    "sin": "sin", "cos": "cos", "tan": "tan", "arcsin": "asin", "arccos": "acos",
    "arctan": "atan", "arcsinh": "asinh", "arccosh": "acosh", "arctanh": "atanh",
    "sqrt": "sqrt", "reciprocal": "reciprocal", "deg2rad": "deg2rad", "radians": "deg2rad",
    "rad2deg": "rad2deg", "degrees": "rad2deg", "rint": "round", "floor": "floor",
    "ceil": "ceil", "trunc": "trunc", "fabs": "abs", "arctan2": "atan2", "hypot": "hypot",
    "copysign": "copysign", "nextafter": "nextafter", "logaddexp": "logaddexp",
    "float_power": "float_power", "divide": "true_divide", "floor_divide": "floor_divide",
    "power": "pow",
}
"""Ops torch computes as numpy does on floats, operands cast to the result's dtype."""
_ARITHMETIC = {
    "add": "add", "subtract": "sub", "multiply": "mul", "maximum": "maximum",
    "minimum": "minimum", "fmax": "fmax", "fmin": "fmin", "square": "square",
    "negative": "neg", "positive": "positive", "absolute": "abs",
}
"""Ops torch computes as numpy does on integers and floats, operands cast to the result's
dtype (integers wrap around in both)."""
_INTEGER_OPS = {
    "bitwise_and": "bitwise_and", "bitwise_or": "bitwise_or", "bitwise_xor": "bitwise_xor",
    "invert": "bitwise_not", "left_shift": "bitwise_left_shift",
    "right_shift": "bitwise_right_shift", "sign": "sign",
}
"""Ops on integers (and bools, but for the shifts and `sign`), operands cast to the result's
dtype."""
_COMPARISONS = {
    "equal": "eq", "not_equal": "ne", "less": "lt", "less_equal": "le", "greater": "gt",
    "greater_equal": "ge",
}
"""Comparisons, operands cast to their common dtype (numpy's loop)."""
_PREDICATES = {
    "isnan": "isnan", "isinf": "isinf", "isfinite": "isfinite", "signbit": "signbit",
    "logical_not": "logical_not", "logical_and": "logical_and", "logical_or": "logical_or",
    "logical_xor": "logical_xor",
}
"""Ops with a bool result, on the operands as they are."""
_TORCH_UFUNCS = _FLOAT_MATH | _ARITHMETIC | _INTEGER_OPS | _COMPARISONS | _PREDICATES
"""The elementwise ops torch computes, by numpy name, with torch's name. Not here, since
torch's results differ from numpy's somewhere (measured on NaN, infinities, signed zeros,
subnormals and extreme integers): remainder, fmod, logaddexp2, heaviside, ldexp, gcd, lcm,
cbrt and spacing (which torch lacks), and `sign` of floats (torch's sign of NaN is 0);
integer division and powers are refused too (division by zero stops torch)."""


def _refuses_ufunc(op: Operation) -> bool:
    """Whether torch does not compute this elementwise op as numpy does (see
    `_TORCH_UFUNCS`); signed zeros may differ (maximum(0.0, -0.0), as Triton's do too)."""
    name, result, kinds = op.name, _kind(op.results[0]), _kinds(op)
    if name not in _TORCH_UFUNCS or "c" in kinds:
        return True
    if name in _FLOAT_MATH:
        return result != "f"
    if name in _ARITHMETIC:
        return result not in "iuf"
    if name in _INTEGER_OPS:
        return result not in ("iu" if name in ("left_shift", "right_shift", "sign") else "iub")
    return False


@_torch(*elementwise.UFUNCS.values(), refuses=_refuses_ufunc)
def _ufunc(op: Operation, ctx: ExecContext) -> KernelFn:
    compute = getattr(torch, _TORCH_UFUNCS[op.name])
    dtype, torch_dtype = _result_dtype(op)
    if op.name in _COMPARISONS:
        common = np.result_type(*(numpy_dtype(v.type.dtype) for v in op.operands))
        cast: torch.dtype | None = TORCH_DTYPES[common.name]
    else:
        cast = None if op.name in _PREDICATES else torch_dtype
    return _elementwise(op, ctx, dtype, lambda *ts: compute(*(
        t if cast is None else t.to(cast) for t in ts)))


@_torch(elementwise.WHERE, refuses=_has_complex)
def _where(op: Operation, ctx: ExecContext) -> KernelFn:
    dtype, torch_dtype = _result_dtype(op)
    return _elementwise(op, ctx, dtype, lambda c, a, b: torch.where(
        c, a.to(torch_dtype), b.to(torch_dtype)))


@_torch(elementwise.ASTYPE, refuses=lambda op: _has_complex(op) or (
    _kind(op.operands[0]) == "f" and _kind(op.results[0]) in "iu"))
def _astype(op: Operation, ctx: ExecContext) -> KernelFn:
    """A cast (not of a float to an integer, whose value out of range C leaves undefined
    and the two libraries give differently)."""
    dtype, torch_dtype = _result_dtype(op)
    return _unary(op, lambda x: x.to(torch_dtype, copy=True))


@_torch(elementwise.REAL, elementwise.IMAG)
def _component(op: Operation, ctx: ExecContext) -> KernelFn:
    part = torch.real if op.name == "real" else torch.imag
    return _unary(op, lambda x: part(x).clone())  # (torch gives a view of the operand)


def _elementwise(op: Operation, ctx: ExecContext, dtype: np.dtype,
                 compute: Callable[..., torch.Tensor]) -> KernelFn:
    """`compute` on the operands, aligned on their local dims when their ranks differ (as
    the numpy kernels align them: size-1 dims after the mesh axes)."""
    rank = max(v.type.rank for v in op.operands)
    k = ctx.mesh_axes

    def run(*arrays: np.ndarray) -> np.ndarray:
        tensors = [to_device(align_local_rank(np.asarray(a), rank, k)) for a in arrays]
        return to_host(compute(*tensors), dtype)
    return run


def _refuses_extremum(op: Operation) -> bool:
    """Whether a max, min, argmax or argmin is one torch does not compute as numpy does:
    of complex numbers (which torch does not order), or over no elements (numpy's
    ValueError, which its kernel raises)."""
    if op.name in (reductions.ARGMAX.name, reductions.ARGMIN.name):
        axes: object = (op.attrs["axis"],)
    elif opdef.lookup(op.name).traits.reduction in (ReduceOp.MAX, ReduceOp.MIN):
        axes = op.attrs["axes"]
    else:
        return False
    assert isinstance(axes, tuple)
    shape = op.operands[0].type.shape
    return _has_complex(op) or any(shape[a] == 0 for a in axes)


def _accumulator(dtype: torch.dtype) -> torch.dtype:
    """What a sum, product or scan of `dtype` accumulates in: fp32 for fp16 and bf16 (as the
    Triton templates do; numpy accumulates those in their own precision), else `dtype`."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


@_torch(*reductions.REDUCTIONS.values(), refuses=_refuses_extremum)
def _reduction(op: Operation, ctx: ExecContext) -> KernelFn:
    kind = opdef.lookup(op.name).traits.reduction
    axes = _axes(op, ctx)
    keepdims = bool(op.attrs["keepdims"])
    _, dtype = _result_dtype(op)
    wide = _accumulator(dtype)

    def reduce(x: torch.Tensor) -> torch.Tensor:
        if not axes:  # (torch reads no dims as all of them)
            return x.to(dtype, copy=True)
        if kind == ReduceOp.SUM:
            return torch.sum(x, dim=axes, keepdim=keepdims, dtype=wide)
        if kind == ReduceOp.MAX:
            return torch.amax(x, dim=axes, keepdim=keepdims)
        if kind == ReduceOp.MIN:
            return torch.amin(x, dim=axes, keepdim=keepdims)
        for axis in sorted(axes, reverse=True):  # torch's prod takes one dim at a time
            x = torch.prod(x, dim=axis, keepdim=keepdims, dtype=wide)
        return x
    return _unary(op, reduce)


@_torch(reductions.ARGMAX, reductions.ARGMIN, refuses=_refuses_extremum)
def _arg_reduction(op: Operation, ctx: ExecContext) -> KernelFn:
    reduce = torch.argmax if op.name == "argmax" else torch.argmin
    axis = ctx.mesh_axes + int_attr(op.attrs, "axis")
    keepdims = bool(op.attrs["keepdims"])

    def arg(x: torch.Tensor) -> torch.Tensor:
        # (torch's ties and NaNs as numpy's: the first maximum, the first NaN; no bools)
        return reduce(x.to(torch.uint8) if x.dtype == torch.bool else x, dim=axis,
                      keepdim=keepdims)
    return _unary(op, arg)


@_torch(reductions.CUMSUM, reductions.CUMPROD)
def _scan(op: Operation, ctx: ExecContext) -> KernelFn:
    scan = torch.cumsum if op.name == "cumsum" else torch.cumprod
    axis = ctx.mesh_axes + int_attr(op.attrs, "axis")
    _, dtype = _result_dtype(op)
    wide = _accumulator(dtype)
    return _unary(op, lambda x: scan(x, dim=axis, dtype=wide))


@_torch(reductions.SORT, reductions.ARGSORT, refuses=_has_complex)
def _sort(op: Operation, ctx: ExecContext) -> KernelFn:
    """A stable sort (NaNs last, as numpy's), whatever `kind` the op names: an order any
    numpy sort kind may give, though not always the one numpy's quicksort gives among
    equal values (argsort's indices of ties; 0.0 and -0.0)."""
    axis = ctx.mesh_axes + int_attr(op.attrs, "axis")
    values = op.name == "sort"

    def order(x: torch.Tensor) -> torch.Tensor:
        done = torch.sort(x, dim=axis, stable=True)
        return done.values if values else done.indices
    return _unary(op, order)


@_torch(shape.REVERSE)
def _reverse(op: Operation, ctx: ExecContext) -> KernelFn:
    axes = _axes(op, ctx)
    return _unary(op, lambda x: torch.flip(x, axes))


@_torch(shape.CONCATENATE)
def _concatenate(op: Operation, ctx: ExecContext) -> KernelFn:
    axis = ctx.mesh_axes + int_attr(op.attrs, "axis")
    dtype, torch_dtype = _result_dtype(op)

    def run(*arrays: np.ndarray) -> np.ndarray:
        parts = [to_device(np.asarray(a)).to(torch_dtype) for a in arrays]
        return to_host(torch.cat(parts, dim=axis), dtype)
    return run


@_torch(padding.MASK)
def _mask(op: Operation, ctx: ExecContext) -> KernelFn:
    regions = padding_regions(op, ctx)
    fill = mask_fill(op).item()

    def run(x: np.ndarray) -> np.ndarray:
        out = to_device(np.asarray(x)).clone()
        for region in regions:
            out[region] = fill
        return to_host(out, x.dtype)
    return run


def _integer_gemm_missing(op: Operation) -> bool:
    """Whether torch lacks this contraction here: bools (numpy's matmul of bools is a
    logical one) anywhere, and integers on a GPU (no integer GEMM in CUDA's torch)."""
    kinds = _kinds(op)
    return "b" in kinds or (DEVICE != "cpu" and bool(kinds & {"i", "u"}))


@_torch(contractions.MATMUL, contractions.EINSUM, refuses=_integer_gemm_missing)
def _contraction(op: Operation, ctx: ExecContext) -> KernelFn:
    """``torch.einsum`` over the local subscripts, the mesh axes as a leading ``...`` that
    broadcasts (a matmul as its subscripts, `matmul_letters`). Integers compute in the
    result's dtype, as numpy's do."""
    if op.name == contractions.MATMUL.name:
        a, b = (v.type for v in op.operands)
        *subscripts, out = matmul_letters(a, b)
    else:
        spec = str_attr(op.attrs, "spec")
        ins, out = spec.replace(" ", "").split("->")
        subscripts = ins.split(",")
    batched = ",".join("..." + s for s in subscripts) + "->..." + out
    dtype, torch_dtype = _result_dtype(op)

    def run(*arrays: np.ndarray) -> np.ndarray:
        tensors = [to_device(np.asarray(a)).to(torch_dtype) for a in arrays]
        return to_host(torch.einsum(batched, *tensors), dtype)
    return run


def _checked(indices: torch.Tensor, axis: int, size: int) -> torch.Tensor:
    """`indices` into a dim of `size` with negative ones counted from its end (int64);
    IndexError as numpy words it for one outside it, naming the user's axis."""
    indices = indices.to(torch.int64)  # (first: a narrow dtype would wrap `size` around)
    outside = (indices < -size) | (indices >= size)
    if bool(outside.any()):
        raise IndexError(f"index {int(indices[outside][0])} is out of bounds for axis {axis} "
                         f"with size {size}")
    return torch.where(indices < 0, indices + size, indices)


@_torch(indexing.TAKE)
def _take(op: Operation, ctx: ExecContext) -> KernelFn:
    """Per device ``np.take(table, indices, axis)``, for all devices in one advanced index
    (the mesh axes indexed by aranges that broadcast against the indices). A device holding
    one block of a sharded `axis` looks up the indices inside its block and gives -0.0 (the
    zero that adds to any x giving x) for the others: a pending sum."""
    k = ctx.mesh_axes
    axis = int_attr(op.attrs, "axis")
    table_type, index_type = (v.type for v in op.operands)
    idx_rank = index_type.rank
    dtype, torch_dtype = _result_dtype(op)
    sharding = table_type.sharding
    mesh_dims = () if sharding is None else sharding.dims[axis]
    extent = table_type.global_shape(ctx.mesh)[axis]
    local = table_type.shape[axis]
    start: torch.Tensor | int = 0
    if mesh_dims:
        first = geometry.block_start(extent, geometry.shard_count(mesh_dims, ctx.mesh),
                                     np.asarray(ctx.block_index(mesh_dims)))
        first = np.asarray(first, dtype=np.int64)
        start = torch.from_numpy(first.reshape(first.shape + (1,) * idx_rank)).to(DEVICE)
    index_dims = list(range(k, k + idx_rank))

    def lookup(table: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        mesh_index = tuple(
            torch.arange(table.shape[j], device=DEVICE).reshape(
                (1,) * j + (-1,) + (1,) * (k - j - 1 + idx_rank)) for j in range(k))
        index: tuple[torch.Tensor | slice, ...] = (*mesh_index, *(slice(None),) * axis,
                                                    indices)
        picked = table[index]
        if k == 0:
            return picked  # one advanced index: its dims stay where it is
        # advanced indices split by slices put their broadcast dims (mesh + index dims) first
        return torch.movedim(picked, index_dims, [d + axis for d in index_dims])

    def run(table: np.ndarray, indices: np.ndarray) -> np.ndarray:
        t = to_device(np.asarray(table))
        at = _checked(to_device(np.asarray(indices)), axis, extent) - start
        if not mesh_dims:
            return to_host(lookup(t, at), dtype)
        inside = (at >= 0) & (at < local)
        picked = lookup(t, torch.where(inside, at, 0))
        mask = inside.reshape(inside.shape[:k] + (1,) * axis + inside.shape[k:]
                              + (1,) * (table_type.rank - axis - 1))
        zero = torch.full((), -0.0 if dtype.kind in "fc" else 0, dtype=torch_dtype,
                          device=DEVICE)
        return to_host(torch.where(mask, picked, zero), dtype)
    return run


@_torch(indexing.SCATTER_ADD, refuses=lambda op: "b" in _kinds(op))
def _scatter_add(op: Operation, ctx: ExecContext) -> KernelFn:
    """``index_add_`` into every device's block, one per mesh position the operands differ
    along (few on the simulated mesh), the indices flattened into one dim."""
    k = ctx.mesh_axes
    axis = int_attr(op.attrs, "axis")
    local = op.type.shape
    dtype, torch_dtype = _result_dtype(op)

    def run(updates: np.ndarray, indices: np.ndarray) -> np.ndarray:
        u, i = to_device(np.asarray(updates)), to_device(np.asarray(indices))
        mesh = tuple(np.broadcast_shapes(tuple(u.shape[:k]), tuple(i.shape[:k])))
        out = torch.zeros(mesh + local, dtype=torch_dtype, device=DEVICE)
        u = u.to(torch_dtype).expand(mesh + tuple(u.shape[k:]))
        i = _checked(i, axis, local[axis]).expand(mesh + tuple(i.shape[k:]))
        count = math.prod(i.shape[k:])
        rows = (*local[:axis], count, *local[axis + 1:])
        for position in itertools.product(*map(range, mesh)):
            out[position].index_add_(axis, i[position].reshape(count),
                                     u[position].reshape(rows))
        return to_host(out, dtype)
    return run

