"""Tracing numpy functions into IR.

Every traced function is run through a small reference interpreter (each op evaluated with
numpy on the global arrays) and must equal calling the function on numpy arrays directly,
dtype included. A few small functions are checked against their exact printed IR, and every
error must name the thing at fault and the line of this file that caused it.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

import dtensor_compiler as dtc
import dtensor_compiler.errors as errors
from dtensor_compiler.ir.core import Function, LayoutOrigin, Module, Operation
from dtensor_compiler.ir.ops.elementwise import BINARY_UFUNCS, UNARY_UFUNCS
from dtensor_compiler.ir.ops.reductions import REDUCTIONS
from dtensor_compiler.ir.parser import parse_module
from dtensor_compiler.ir.printer import print_module
from dtensor_compiler.ir.reasons import OutLayout, UserRelayout
from dtensor_compiler.ir.sharding import MeshShape, Sharding
from dtensor_compiler.ir.types import TensorType, dtype_name, numpy_dtype
from dtensor_compiler.tracing import is_traced, trace, traced_relayout

MESH = MeshShape((("dp", 2), ("tp", 4)))
RNG = np.random.default_rng(0)

# ---------------------------------------------------------------------------------------------
# reference interpreter


def _iota(op: Operation, args: list) -> np.ndarray:
    shape, d = op.type.shape, op.attrs["dimension"]
    line = np.arange(shape[d], dtype=numpy_dtype(op.type.dtype))
    return np.broadcast_to(line.reshape([-1 if i == d else 1 for i in range(len(shape))]),
                           shape)


EVAL: dict[str, Callable[[Operation, list], object]] = {
    "matmul": lambda op, a: np.matmul(*a),
    "einsum": lambda op, a: np.einsum(op.attrs["spec"], *a),
    "reshape": lambda op, a: np.reshape(a[0], op.type.shape),
    "transpose": lambda op, a: np.transpose(a[0], op.attrs["perm"]),
    "broadcast_to": lambda op, a: np.broadcast_to(a[0], op.type.shape),
    "concatenate": lambda op, a: np.concatenate(a, axis=op.attrs["axis"]),
    "slice": lambda op, a: a[0][tuple(slice(*s) for s in zip(
        op.attrs["start"], op.attrs["stop"], op.attrs["step"]))],
    "take": lambda op, a: np.take(a[0], a[1], axis=op.attrs["axis"]),
    "constant": lambda op, a: op.attrs["value"],
    "full": lambda op, a: np.full(op.type.shape, op.attrs["value"], numpy_dtype(op.type.dtype)),
    "iota": _iota,
    "astype": lambda op, a: a[0].astype(numpy_dtype(op.type.dtype)),
    "where": lambda op, a: np.where(*a),
    "argmax": lambda op, a: np.argmax(a[0], op.attrs["axis"], keepdims=op.attrs["keepdims"]),
    "argmin": lambda op, a: np.argmin(a[0], op.attrs["axis"], keepdims=op.attrs["keepdims"]),
    "relayout": lambda op, a: a[0],
    "cumsum": lambda op, a: np.cumsum(a[0], axis=op.attrs["axis"]),
    "cumprod": lambda op, a: np.cumprod(a[0], axis=op.attrs["axis"]),
    "sort": lambda op, a: np.sort(a[0], axis=op.attrs["axis"], kind=op.attrs["kind"]),
    "argsort": lambda op, a: np.argsort(a[0], axis=op.attrs["axis"], kind=op.attrs["kind"]),
    "reverse": lambda op, a: np.flip(a[0], op.attrs["axes"]),
    "real": lambda op, a: np.real(a[0]),
    "imag": lambda op, a: np.imag(a[0]),
}
for _name in UNARY_UFUNCS + BINARY_UFUNCS:
    EVAL[_name] = lambda op, a: getattr(np, op.name)(*a)
for _kind, _definition in REDUCTIONS.items():
    EVAL[_definition.name] = (lambda fn: lambda op, a: fn(a[0], axis=op.attrs["axes"],
                                               keepdims=op.attrs["keepdims"]))(
        {"sum": np.sum, "max": np.max, "min": np.min, "prod": np.prod}[_kind])


def interpret(func: Function, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Evaluate `func` on global arrays; every op's result must match its IR type."""
    env = {id(a): x for a, x in zip(func.args, inputs)}
    with np.errstate(all="ignore"):
        for op in func.ops:
            out = np.asarray(EVAL[op.name](op, [env[id(v)] for v in op.operands]))
            assert (dtype_name(out.dtype), out.shape) == (op.type.dtype, op.type.shape), op.name
            env[id(op.result)] = out
    return [env[id(v)] for v in func.results]


def type_of(x: np.ndarray, sharding: Sharding | None = None) -> TensorType:
    return TensorType(dtype_name(x.dtype), x.shape, sharding)


def trace_on(fn: Callable, *inputs: np.ndarray, **kwargs: object) -> Module:
    names = list(inspect.signature(fn).parameters)
    if len(names) != len(inputs):
        names = [f"x{i}" for i in range(len(inputs))]
    return trace(fn, [type_of(x) for x in inputs], names, MESH, **kwargs)


def check(fn: Callable, *inputs: np.ndarray) -> Module:
    """Trace `fn`, interpret it, compare with numpy (values and dtypes)."""
    module = trace_on(fn, *inputs)
    got = interpret(module.main, inputs)
    with np.errstate(all="ignore"):
        want = fn(*inputs)
    want = list(want) if isinstance(want, (tuple, list)) else [want]
    assert len(got) == len(want)
    for g, w in zip(got, want):
        w = np.asarray(w)
        assert g.dtype == w.dtype, (g.dtype, w.dtype)
        assert g.shape == w.shape, (g.shape, w.shape)
        if g.dtype.kind in "fc":  # numpy's own kernels (dot vs matmul) may round differently
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
        else:
            np.testing.assert_array_equal(g, w)
    return module


def f32(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def ops_of(module: Module) -> list[str]:
    return [op.name for op in module.main.ops]


def line_of(marker: str) -> int:
    """The line of this file holding `marker` (in a comment), for location checks."""
    with open(__file__) as f:
        for i, text in enumerate(f, 1):
            if text.rstrip().endswith(f"# {marker}"):
                return i
    raise AssertionError(marker)


HERE = os.path.basename(__file__)

# ---------------------------------------------------------------------------------------------
# printed IR


def test_mlp_prints_with_pinned_layouts() -> None:
    def mlp(x, w1, w2):
        return np.tanh(x @ w1) @ w2

    types = [TensorType("f32", (8, 16), Sharding.of("dp", None)), TensorType("f32", (16, 32)),
             TensorType("f32", (32, 16), Sharding.of("tp", None))]
    module = trace(mlp, types, ["x", "w1", "w2"], MESH, out_shardings=Sharding.of("dp", None))
    assert print_module(module) == "\n".join([
        "mesh<dp=2, tp=4>",
        "func @mlp(%x: f32[8,16] @ {dp, -}, %w1: f32[16,32], %w2: f32[32,16] @ {tp, -})"
        " -> (f32[8,16] @ {dp, -}) {",
        "  %0 = matmul %x, %w1 : f32[8,32]",
        "  %1 = tanh %0 : f32[8,32]",
        "  %2 = matmul %1, %w2 : f32[8,16]",
        "  %3 = relayout %2 : f32[8,16] @ {dp, -}  // why: out_layouts[0] of mlp",
        "  return %3",
        "}",
        "",
    ])
    assert module.main.results[0].origin == LayoutOrigin("out_layouts[0]")
    assert module.main.args[0].origin == LayoutOrigin("%x")
    assert module.main.args[1].origin is None


def test_softmax_prints_and_locates_every_op() -> None:
    def softmax(x):
        e = np.exp(x - x.max(-1, keepdims=True))  # softmax-exp
        return e / e.sum(-1, keepdims=True)  # softmax-div

    module = trace(softmax, [TensorType("f32", (4, 8))], ["x"], MESH, name="sm")
    text = print_module(module)
    assert text == """\
mesh<dp=2, tp=4>
func @sm(%x: f32[4,8]) -> (f32[4,8]) {
  %0 = reduce_max %x {axes = [1], keepdims = true} : f32[4,1]
  %1 = subtract %x, %0 : f32[4,8]
  %2 = exp %1 : f32[4,8]
  %3 = reduce_sum %2 {axes = [1], keepdims = true} : f32[4,1]
  %4 = divide %2, %3 : f32[4,8]
  return %4
}
"""
    lines = [op.loc.line for op in module.main.ops]
    assert lines == [line_of("softmax-exp")] * 3 + [line_of("softmax-div")] * 2
    # named from the project root, whatever the working directory
    assert all(op.loc.file == "tests/test_tracing.py" for op in module.main.ops)


def test_python_scalars_are_weak_and_constants_compact() -> None:
    table = np.arange(20, dtype=np.float32).reshape(4, 5)

    def f(x):
        return x * 2 + np.float64(0.5) + table + np.zeros((4, 5), np.float32)

    module = trace_on(f, f32(4, 5))
    text = print_module(module)
    assert "%0 = full {value = 2.0} : f32[]" in text
    assert "%2 = full {value = 0.5} : f64[]" in text
    assert "%4 = constant {value = dense_hex<" in text
    assert "%6 = full {value = 0.0} : f32[4,5]" in text
    assert module.main.results[0].type.dtype == "f64"


def test_complex_scalars_and_constants_print_and_parse_back() -> None:
    small = np.arange(5) * 1j

    def f(z):
        return z * 2 + 1j + small + np.full((4, 5), 2 - 1j) + np.zeros_like(z)

    z = RNG.standard_normal((4, 5)) + 1j * RNG.standard_normal((4, 5))
    module = check(f, z)
    text = print_module(module)
    assert "%0 = constant {value = dense_hex<" in text
    assert " full " not in text  # no complex scalar attribute
    assert print_module(parse_module(text)) == text


# ---------------------------------------------------------------------------------------------
# elementwise


def _ufunc_input(name: str, n: int) -> list[np.ndarray]:
    if name in ("gcd", "lcm", "left_shift", "right_shift", "bitwise_and", "bitwise_or",
                "bitwise_xor", "invert"):
        return [RNG.integers(0, 7, (3, 4)).astype(np.int32) for _ in range(n)]
    if name in ("logical_not", "logical_and", "logical_or", "logical_xor"):
        return [RNG.random((3, 4)) > 0.5 for _ in range(n)]
    if name == "ldexp":
        return [f32(3, 4), RNG.integers(-3, 3, (3, 4)).astype(np.int32)]
    if name in ("arccosh",):
        return [1.5 + RNG.random((3, 4)).astype(np.float32)]
    if name in ("arcsin", "arccos", "arctanh"):
        return [RNG.uniform(-0.9, 0.9, (3, 4)).astype(np.float32)]
    return [np.abs(f32(3, 4)) + 0.5 for _ in range(n)]


@pytest.mark.parametrize("name", UNARY_UFUNCS + BINARY_UFUNCS)
def test_every_ufunc(name: str) -> None:
    ufunc = getattr(np, name)
    inputs = _ufunc_input(name, ufunc.nin)
    module = check(lambda *xs: ufunc(*xs), *inputs)
    assert ops_of(module) == [name]


def test_operators_with_scalars_and_reflection() -> None:
    def f(x, i, b):
        return (x + 1, 1 + x, x - 2.5, 3 - x, x * 2, 2.0 * x, x / 4, 1 / (x + 9), x // 2,
                7 // (i + 1), x % 3, 5 % (i + 1), x ** 2, 2 ** i, -x, +x, abs(x), x @ x.T,
                x < 0, 0 < x, x <= i, x > 1, x >= 1, x == i, x != i, i & 3, 3 | i, i ^ i,
                ~i, ~b, b & True, i << 1, i >> 1, i * 2.5, np.float32(2) * i, x * True,
                np.ones((3, 3)) - x, np.eye(3) @ x, np.float64(1) < x)

    check(f, f32(3, 3), RNG.integers(0, 9, (3, 3)).astype(np.int32), RNG.random((3, 3)) > 0.5)


def test_mixed_dtypes_follow_numpy() -> None:
    def f(h, x, i, u):
        return h + x, h * 2.0, i + x, i / 2, u + 3, i * u, h + np.float16(1), x.astype(np.int8)

    check(f, f32(3).astype(np.float16), f32(3), np.arange(3, dtype=np.int32),
          np.arange(3, dtype=np.uint8))


def test_where_clip_maximum_minimum() -> None:
    def f(x, y, i):
        return (np.where(x > 0, x, 0.0), np.where(x > y, x, y), np.where(i, x, -np.inf),
                np.where(x > 0, 1.0, 0), np.clip(x, -0.5, 0.5), x.clip(0), np.clip(i, 0, 1.5),
                np.clip(x, None, y), np.maximum(x, y), np.minimum(x, 0.1), np.power(x, 2),
                np.sign(x), np.sqrt(np.abs(x)), np.exp(x), np.log(np.abs(x) + 1),
                np.tanh(x) * np.exp(1.0))

    check(f, f32(4, 5), f32(4, 5), RNG.integers(0, 2, (4, 5)).astype(np.int64))


def test_broadcasting_is_left_to_the_ops() -> None:
    module = check(lambda x, b: x * b + x[:, :1], f32(3, 4), f32(4))
    assert ops_of(module) == ["multiply", "slice", "add"]


# ---------------------------------------------------------------------------------------------
# reductions


@pytest.mark.parametrize("axis", [None, 0, -1, (0, 2), (2, 0)])
@pytest.mark.parametrize("keepdims", [False, True])
def test_reductions(axis: object, keepdims: bool) -> None:
    def f(x, i):
        kw = {"axis": axis, "keepdims": keepdims}
        return (np.sum(x, **kw), x.sum(**kw), x.mean(**kw), np.max(x, **kw), x.min(**kw),
                np.prod(x, **kw), np.amax(x, **kw), np.amin(x, **kw), np.var(x, **kw),
                x.std(**kw), x.var(ddof=1, **kw), np.std(x, ddof=1, **kw), i.sum(**kw),
                i.mean(**kw), i.var(**kw), np.prod(i, **kw), i.max(**kw),
                x.astype(np.float16).mean(**kw), np.add.reduce(x, **kw),
                np.maximum.reduce(i, **kw), np.sum(i, dtype=np.float32, **kw))

    check(f, f32(2, 3, 4), RNG.integers(-5, 5, (2, 3, 4)).astype(np.int32))


def test_mean_and_var_of_narrow_floats_divide_by_their_count_as_numpy_does() -> None:
    """numpy divides a sum by its count (an intp) in float64: float16 does not hold 3001
    exactly, nor 70001 at all (inf). Bit-exact against numpy, bfloat16 too."""
    import ml_dtypes

    for dtype in (np.float16, ml_dtypes.bfloat16, np.float32):
        for n in (2048, 3001, 70001):
            x = RNG.uniform(-1, 1, n).astype(dtype)
            for fn in (np.mean, np.var, np.std, lambda a: np.var(a, ddof=1)):
                got = np.asarray(dtc.compile(fn)(x))
                assert got.tobytes() == np.asarray(fn(x)).tobytes(), (dtype, n, fn)


def test_a_narrow_accumulation_dtype_wraps_like_numpy() -> None:
    i8 = RNG.integers(-128, 128, (4, 16)).astype(np.int8)
    module = check(lambda i, b: (i.sum(axis=1, dtype=np.int8), np.prod(i, 0, dtype=np.int8),
                                 np.sum(i, dtype=np.uint8), b.sum(axis=0, dtype=bool),
                                 b.prod(axis=1, dtype=bool)),
                   i8, RNG.random((4, 16)) > 0.7)
    assert [v.type.dtype for v in module.main.results] == ["i8", "i8", "u8", "bool", "bool"]


def test_ufunc_reduce_defaults_to_axis_zero() -> None:
    module = check(lambda x: (np.add.reduce(x), np.multiply.reduce(x), np.minimum.reduce(x)),
                   f32(3, 4))
    assert [op.attrs["axes"] for op in module.main.ops] == [(0,)] * 3


def test_mean_divides_by_the_count() -> None:
    module = check(lambda x: x.mean(axis=(0, 1)), f32(2, 3, 4))
    assert ops_of(module) == ["reduce_sum", "full", "divide"]
    assert module.main.ops[1].attrs["value"] == 6.0


@pytest.mark.parametrize("axis", [None, 0, 1, -1])
@pytest.mark.parametrize("keepdims", [False, True])
def test_argmax_argmin(axis: int | None, keepdims: bool) -> None:
    check(lambda x: (np.argmax(x, axis=axis, keepdims=keepdims),
                     x.argmin(axis=axis, keepdims=keepdims)), f32(3, 5))


# ---------------------------------------------------------------------------------------------
# contractions


def test_matmul_and_dot_lift_vectors_like_numpy() -> None:
    def f(m, v, b, w, t):
        return (m @ v, v @ m.T, v @ v, np.matmul(b, m.T), b @ v, np.dot(m, v), np.dot(v, v),
                np.dot(m, m.T), np.dot(b, m.T), np.dot(m, t), np.dot(2.0, m), m.dot(v),
                np.matmul(w, m.T))

    check(f, f32(3, 4), f32(4), f32(2, 5, 4), np.arange(8).reshape(2, 4),
          f32(2, 4, 3))


def test_vector_matmul_ops() -> None:
    module = trace_on(lambda v, m: v @ m, f32(4), f32(4, 3))
    assert ops_of(module) == ["reshape", "matmul", "reshape"]
    assert module.main.results[0].type.shape == (3,)


@pytest.mark.parametrize("spec, shapes", [
    ("ij,jk->ik", [(3, 4), (4, 5)]),
    ("ij,jk", [(3, 4), (4, 5)]),
    ("ba", [(3, 4)]),
    ("bij,bjk->bik", [(2, 3, 4), (2, 4, 5)]),
    ("...ij,...jk->...ik", [(2, 3, 4), (4, 5)]),
    ("...ij,jk", [(2, 6, 3, 4), (4, 5)]),
    ("i...,i...->...", [(3, 2, 4), (3, 1, 4)]),
    ("ij->", [(3, 4)]),
    ("ij,j->i", [(3, 4), (4,)]),
    ("bhqd,bhkd->bhqk", [(2, 2, 3, 4), (2, 2, 5, 4)]),
    ("ij,kj->ik", [(3, 1), (2, 4)]),
])
def test_einsum(spec: str, shapes: list[tuple[int, ...]]) -> None:
    module = check(lambda *xs: np.einsum(spec, *xs), *[f32(*s) for s in shapes])
    einsum = next(op for op in module.main.ops if op.name == "einsum")
    assert "->" in einsum.attrs["spec"] and "." not in einsum.attrs["spec"]


def test_einsum_normalized_specs() -> None:
    module = trace_on(lambda a, b: np.einsum("...ij,jk", a, b), f32(2, 3, 4), f32(4, 5))
    assert module.main.ops[0].attrs["spec"] == "aij,jk->aik"
    module = trace_on(lambda a: np.einsum("ba", a), f32(2, 3))
    assert module.main.ops[0].attrs["spec"] == "ba->ab"


def test_tensordot_inner_outer() -> None:
    def f(a, b, c, v):
        return (np.tensordot(a, b), np.tensordot(a, c.T, axes=1),
                np.tensordot(a, c, axes=([1], [0])), np.tensordot(b, a, axes=([0, 1], [1, 2])),
                np.tensordot(a, c, axes=0), np.inner(v, v), np.inner(c, v[:4]), np.outer(v, c),
                np.inner(a, 3.0))

    check(f, f32(2, 3, 4), f32(3, 4, 2), f32(3, 4), f32(5))


# ---------------------------------------------------------------------------------------------
# shapes, joins and splits


def test_shape_ops() -> None:
    def f(x):
        return (x.reshape(4, -1), x.reshape((-1,)), np.reshape(x, (2, 2, 6)), x.transpose(),
                x.transpose(1, 0, 2), x.transpose((2, 0, 1)), x.T, np.transpose(x, (0, 2, 1)),
                x.swapaxes(0, 2), np.moveaxis(x, 0, -1), np.moveaxis(x, [0, 1], [2, 0]),
                np.expand_dims(x, 1), np.expand_dims(x, (0, -1)), np.squeeze(x[:, :1]),
                x[:1].squeeze(0), np.broadcast_to(x[:, :1], (2, 3, 4)), np.ravel(x),
                x.flatten(), x.ravel(), x.copy(), np.copy(x), x.astype(np.int32),
                np.astype(x, np.float64), x.shape[0] * x, x.size + x.ndim + len(x) + x)

    check(f, f32(2, 3, 4))


def test_identity_shape_ops_emit_nothing() -> None:
    module = trace_on(lambda x: x.reshape(2, 3).transpose(0, 1).astype(np.float32).copy(),
                      f32(2, 3))
    assert ops_of(module) == []


def test_numpy_queries() -> None:
    def f(x):
        assert np.shape(x) == (2, 3) and np.ndim(x) == 2 and np.size(x) == 6
        assert np.size(x, 1) == 3 and x.dtype == np.float32 and is_traced(x)
        return x

    assert trace_on(f, f32(2, 3)).main.results[0] is not None
    assert not is_traced(np.ones(3))


def test_joins_and_splits() -> None:
    def f(a, b, v):
        p, q = np.split(a, 2, axis=1)
        r = np.array_split(a, 3, axis=1)
        s = np.split(a, [1, -1], axis=1)
        return (np.concatenate([a, b]), np.concatenate((a, b), axis=-1),
                np.concatenate([a, b], axis=None), np.concatenate([a, np.ones((1, 4))]),
                np.stack([a, b]), np.stack([a, b], axis=-1), np.hstack([a, b]), np.hstack([v, v]),
                np.vstack([a, b]), np.vstack([v, v]), p, q, *r, *s)

    check(f, f32(2, 4), f32(2, 4), f32(3))


# ---------------------------------------------------------------------------------------------
# indexing


def test_basic_slicing() -> None:
    def f(x):
        return (x[0], x[-1], x[1:], x[:, -2:], x[..., 1], x[None], x[:, None, 1:3],
                x[1, ..., np.newaxis], x[::2, 1::3, :-1], x[0, 1, 2], x[5:], x[2:1],
                x[-100:100], x[...], x[:, 0:4:2])

    check(f, f32(3, 4, 5))


def test_int_index_is_a_take_of_a_0d_index() -> None:
    module = trace_on(lambda x: x[1, 1:, None], f32(3, 4))
    assert ops_of(module) == ["slice", "full", "take", "reshape"]
    assert module.main.ops[0].attrs == {"start": (0, 1), "stop": (3, 4), "step": (1, 1)}
    assert module.main.ops[1].type.shape == ()
    assert module.main.ops[2].attrs == {"axis": 0}
    assert module.main.results[0].type.shape == (3, 1)


def test_take_embedding_lookup() -> None:
    idx = np.array([[0, 3], [2, -1]])

    def f(table, ids):
        return (np.take(table, ids, axis=0), table[ids], table[:, ids[0]], table[idx],
                np.take(table, [1, 2]), table.take(ids, axis=1), table[..., [0, 2]],
                np.take(table, 3, axis=0))

    module = check(f, f32(5, 4), np.array([[1, 2], [0, 3]], dtype=np.int32))
    assert ops_of(module).count("take") == 9  # and ids[0]: an int index is a take too


# ---------------------------------------------------------------------------------------------
# creation and constants


def test_creation() -> None:
    def f(x, i):
        return (np.zeros_like(x), np.ones_like(i), np.full_like(x, 2.5), np.full_like(i, 2.5),
                np.zeros_like(x, shape=(2,)),
                np.zeros((2, 3), like=x), np.ones(3, np.int32, like=x), np.full(2, 7, like=x),
                np.full((2, 3), x[0], like=x), np.arange(5, like=x), np.arange(1, 10, 3, like=x),
                np.arange(0.5, 2.0, 0.25, like=x), np.arange(2, 4, dtype=np.float32, like=x),
                np.arange(1, like=x), x + np.arange(3), np.exp(2.0) * x)

    module = check(f, f32(2, 3), np.arange(4, dtype=np.int32))
    assert "iota" in ops_of(module)


def test_empty_is_zeros() -> None:
    module = trace_on(lambda x: (np.empty_like(x, dtype=np.int8), np.empty(2, like=x)), f32(3))
    assert [interpret(module.main, [f32(3)])[i].tolist() for i in (0, 1)] == [[0, 0, 0],
                                                                            [0.0, 0.0]]
    assert [v.type.dtype for v in module.main.results] == ["i8", "f64"]


def test_constant_outputs() -> None:
    module = check(lambda x: (x, np.arange(3.0), 2), f32(2))
    assert ops_of(module) == ["constant", "full"]


# ---------------------------------------------------------------------------------------------
# relayout and out_layouts


def test_traced_relayout_and_multiple_out_layouts() -> None:
    def f(x):
        y = traced_relayout(x, Sharding.of(None, "tp"))
        return y + 1, x

    types = [TensorType("f32", (4, 8), Sharding.of("dp", None))]
    module = trace(f, types, ["x"], MESH, out_shardings=[Sharding.of("dp", "tp"), None])
    relayouts = [op for op in module.main.ops if op.name == "relayout"]
    assert [(op.type.sharding.text(), op.why) for op in relayouts] == [
        ("{-, tp}", UserRelayout()), ("{dp, tp}", OutLayout(0, "f"))]
    assert module.main.results[1] is module.main.args[0]


def test_bad_out_layouts() -> None:
    with pytest.raises(errors.TraceError, match="returns 2 value"):
        trace_on(lambda x: (x, x), f32(4), out_shardings=Sharding.of("dp"))
    with pytest.raises(errors.LayoutError, match="rank"):
        trace_on(lambda x: x, f32(4), out_shardings=Sharding.of("dp", None))


# ---------------------------------------------------------------------------------------------
# errors name the function and the user's line


def _raises(exc: type[Exception], fn: Callable, marker: str, *inputs: np.ndarray) -> str:
    with pytest.raises(exc) as info:
        trace_on(fn, *inputs)
    message = str(info.value)
    assert f"{HERE}:{line_of(marker)}" in message, message
    return message


def test_unsupported_function() -> None:
    def f(x):
        return np.linalg.svd(x)  # svd-line

    message = _raises(errors.UnsupportedOperationError, f, "svd-line", f32(3, 3))
    assert "numpy.linalg.svd is not supported" in message


def test_unsupported_ufunc_method_and_arguments() -> None:
    def f(x):
        return np.maximum.accumulate(x)  # accumulate-line

    message = _raises(errors.UnsupportedOperationError, f, "accumulate-line", f32(3))
    assert "numpy.maximum.accumulate is not supported" in message

    def g(x):
        return np.sum(x, where=x > 0)  # where-kwarg

    message = _raises(errors.UnsupportedOperationError, g, "where-kwarg", f32(3))
    assert "numpy.sum" in message and "where" in message


def test_shape_mismatch_names_the_line() -> None:
    def f(x, y):
        return x @ y  # mismatch-line

    message = _raises(errors.ShapeError, f, "mismatch-line", f32(3, 4), f32(5, 6))
    assert "matmul" in message

    def g(x):
        return x.reshape(7, -1)  # reshape-line

    _raises(errors.ShapeError, g, "reshape-line", f32(3, 4))


def test_data_dependent_control_flow() -> None:
    def f(x):
        if x.sum() > 0:  # bool-line
            return x
        return -x

    message = _raises(errors.TraceError, f, "bool-line", f32(3))
    assert "truth value" in message

    for conversion in (float, int, np.asarray, list, range):
        with pytest.raises(errors.TraceError):
            trace_on(lambda x, c=conversion: c(x), f32(1))


def test_boolean_and_advanced_indexing_are_rejected() -> None:
    def f(x):
        return x[x > 0]  # mask-line

    message = _raises(errors.UnsupportedOperationError, f, "mask-line", f32(4))
    assert "boolean" in message

    def g(x):
        return x[[0, 1], [1, 0]]  # fancy-line

    _raises(errors.UnsupportedOperationError, g, "fancy-line", f32(3, 3))

    def h(x):
        x[0] = 1.0  # setitem-line
        return x

    _raises(errors.TraceError, h, "setitem-line", f32(3))


def test_unsupported_dtype() -> None:
    def f(x):
        return x.astype(str)  # dtype-line

    message = _raises(errors.TraceError, f, "dtype-line", f32(3))
    assert "not supported" in message


def test_escaped_tracer_is_rejected() -> None:
    leaked = []
    trace_on(lambda x: leaked.append(x) or x, f32(2))
    with pytest.raises(errors.TraceError, match="escaped"):
        leaked[0] + 1


def test_locations_do_not_depend_on_the_working_directory(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    def f(x):
        return np.exp(x)

    here = trace_on(f, f32(4))
    monkeypatch.chdir(tmp_path)
    elsewhere = trace_on(f, f32(4))
    assert print_module(here, locations=True) == print_module(elsewhere, locations=True)
    assert here.main.ops[0].loc.file == "tests/test_tracing.py"


@pytest.mark.parametrize("fn", [
    lambda x: np.cumsum(x, axis=1),
    lambda x: x.cumsum(axis=0),
    lambda x: np.cumsum(x),
    lambda x: np.add.accumulate(x),
    lambda x: np.add.accumulate(x, axis=1, dtype=np.float16),
    lambda x: np.cumsum(x.astype(np.int8), axis=1, dtype=np.int8),
    lambda x: np.cumsum(x > 0, axis=0),
])
def test_cumsum_and_add_accumulate_follow_numpy(fn: Callable) -> None:
    x = np.random.default_rng(1).integers(-90, 90, (4, 6)).astype(np.float32)
    module = check(fn, x)
    assert "cumsum" in ops_of(module)


def test_cumsum_edge_cases_follow_numpy() -> None:
    check(lambda x: np.cumsum(x[0, 0], axis=0), f32(2, 3))        # a 0-d array: its ravel
    check(lambda x: np.add.accumulate(x[0], axis=None), f32(2, 3))  # one axis: fine
    for fn, message in [
        (lambda x: np.add.accumulate(x, axis=None), "accumulate does not allow multiple axes"),
        (lambda x: np.add.accumulate(x[0, 0]), "cannot accumulate on a scalar"),
        (lambda x: np.cumsum(x, axis=1.0), "'float' object cannot be interpreted as an integer"),
    ]:
        with pytest.raises(errors.ShapeError, match=message):
            trace_on(fn, f32(2, 3))


def test_empty_arrays_reshape_and_take_like_numpy() -> None:
    empty = np.zeros((0, 8), np.float32)
    check(lambda x: x.reshape(-1), empty)
    check(lambda x: x.reshape(8, 0), empty)
    check(lambda x: np.cumsum(x), empty)
    check(lambda x: np.take(x, np.array([], dtype=np.int64), axis=0), empty)


def test_big_endian_arrays_are_taken_in_native_order() -> None:
    x = np.arange(6, dtype=">f4").reshape(2, 3)
    got = dtc.compile(lambda x, c: np.tanh(x) + c)(x, np.array([1, 2, 3], dtype=">i4"))
    np.testing.assert_allclose(np.asarray(got), np.tanh(x) + np.array([1, 2, 3]), rtol=1e-6)
    captured = np.arange(3, dtype=">f8")
    check(lambda x: x + captured, f32(2, 3))
    mesh = dtc.create_mesh([("a", 2)])
    placed = dtc.copy_to_mesh(x, dtc.Layout(["a", dtc.UNSHARDED], mesh))
    assert placed.dtype == np.float32 and np.asarray(dtc.relayout(
        placed, dtc.Layout.replicated(mesh, 2))).tolist() == x.tolist()


def test_a_nan_with_its_sign_bit_set_keeps_it_through_the_ir_text() -> None:
    negative_nan = -np.array([np.nan], np.float32)
    module = trace_on(lambda x: x + negative_nan, f32(1))
    text = print_module(module)
    assert "dense_hex" in text and "full" not in text
    value = parse_module(text).main.ops[0].attrs["value"]
    assert value.tobytes() == negative_nan.tobytes()


def test_in_place_operators_on_traced_arrays_are_refused_at_the_users_line() -> None:
    def f(x):
        y = x[0]
        x += 1  # in-place
        return y * 1

    message = _raises(errors.TraceError, f, "in-place", f32(2, 2))
    assert "traced arrays are immutable: += " in message and "x = x + y" in message


@pytest.mark.parametrize("fn", [
    lambda x: x.astype(np.uint8) == -1,
    lambda x: -1 < x.astype(np.uint8),
    lambda x: x.astype(np.int8) < 1000,
    lambda x: x.astype(np.int8) >= -1000,
    lambda x: 300 != x.astype(np.uint8),
    lambda x: np.clip(x.astype(np.uint8), -1, 300),
    lambda x: np.clip(x.astype(np.int8), None, 1000),
    lambda x: x + 2**70,
    lambda x: np.take(x, [], axis=0),
])
def test_numbers_beyond_a_dtype_and_empty_indices_follow_numpy(fn: Callable) -> None:
    check(fn, f32(3, 4) * 10)


def test_numbers_numpy_refuses_are_refused_with_numpys_message() -> None:
    with pytest.raises(errors.ShapeError, match="Python integer 300 out of bounds for uint8"):
        trace_on(lambda x: np.clip(x.astype(np.uint8), 300, None), f32(3))
    with pytest.raises(errors.ShapeError, match="Python integer 300 out of bounds for uint8"):
        trace_on(lambda x: x.astype(np.uint8) + 300, f32(3))


@pytest.mark.parametrize("fn", [
    lambda x: np.any(x > 0, axis=(0, 2)),
    lambda x: np.all(x > -1, axis=-1, keepdims=True),
    lambda x: np.any(x[:, :0], axis=1, keepdims=True),
    lambda x: np.all(x[0, 0, 0]),
    lambda x: np.round(x, 3),
    lambda x: np.round(x.astype(np.int64) * 11, -1),
    lambda x: np.round(x.astype(np.float16), 1),
    lambda x: x[::-1, 2:0:-1, ::2],
    lambda x: x[3:-5:-1],
    lambda x: np.flip(x, (0, -1)),
    lambda x: np.roll(x, -7, axis=2),
    lambda x: np.roll(x, (1, 1), axis=(0, 0)),
    lambda x: np.pad(x, ((0, 1), (2, 0), (1, 1)), constant_values=7),
    lambda x: np.pad(x.astype(np.int8), 1, constant_values=-3.7),
    lambda x: np.triu(x, -1),
    lambda x: np.tril(x.astype(np.int32), 1),
    lambda x: np.sort(x, axis=1, kind="stable"),
    lambda x: np.argsort(x.astype(np.int8), axis=None),
    lambda x: np.linalg.norm(x, axis=(0, 2)),
    lambda x: np.linalg.norm(x > 0, keepdims=True),
    lambda x: np.cumprod(x, axis=None),
    lambda x: np.cumprod(x > 0, axis=1, dtype=np.int8),
    lambda x: np.imag(x.astype(np.complex128) * 1j),
    lambda x: x.mT,
    lambda x: np.einsum("abc,cd,de->ae", x, x[0], x[0].T),
])
def test_issue_7_point_14_functions_follow_numpy(fn: Callable) -> None:
    check(fn, f32(3, 4, 4))


def test_a_reused_constant_is_one_op_per_line_and_keeps_a_nans_sign():
    """The recorder shares a ``full`` among the uses of one line only, so each op keeps the
    line it was written on (an error about the returned zeros names the call, as for any
    returned value, not line A where other zeros were made);
    NaNs of either sign stay apart (and a signed NaN, which the IR text cannot write as a
    scalar, is a constant), as 0.0 and -0.0 do."""
    mesh = dtc.create_mesh([("x", 4)])
    line = inspect.currentframe().f_lineno  # type: ignore[union-attr]

    def f(x):
        y = x + np.zeros((3, 5))  # line A
        return y * 2.0, np.zeros((3, 5))

    with pytest.raises(dtc.LayoutError, match=rf"test_tracing.py:{line + 7}: out_layouts\[1\]"):
        dtc.compile(f, out_layouts=(None, dtc.Layout(["x"], mesh)))(np.ones((3, 5)))

    def signs(x):
        return (np.copysign(1.0, x + np.nan), np.copysign(1.0, x + -np.nan),
                np.copysign(1.0, x * 0.0), np.copysign(1.0, x * -0.0))

    x = np.array([1.0, 2.0, 3.0])
    for pipeline in (None, "propagate-layouts,insert-collectives,localize"):
        compiled = dtc.compile(signs, **({} if pipeline is None else {"pipeline": pipeline}))
        got = [np.asarray(v) for v in compiled(x)]
        for g, want in zip(got, signs(x)):
            np.testing.assert_array_equal(g, want)


def test_ndarray_methods_take_numpys_arguments() -> None:
    """C order as numpy's default; another order, `out=`, a modulus and divmod (whose
    numpy function is not supported) are refused at the user's line."""
    import copy

    x = f32(3, 4)
    got = dtc.compile(lambda a: (a.flatten("C"), a.ravel(order="C"), a.copy("F") + 1,
                                 a.dot(a.T, None), copy.deepcopy(a) * 2))(x)
    for g, w in zip(got, (x.ravel(), x.ravel(), x + 1, x @ x.T, x * 2)):
        np.testing.assert_allclose(np.asarray(g), w, rtol=1e-6)
    line = inspect.currentframe().f_lineno  # type: ignore[union-attr]
    for below, fn, message in (
            (2, lambda a: a.flatten(order="F"), r"ndarray.flatten with order='F'"),
            (3, lambda a: pow(a, 2, 3), "pow with a modulus"),
            (4, lambda a: divmod(a, 3), "numpy.divmod is not supported")):
        with pytest.raises(errors.UnsupportedOperationError,
                           match=rf"test_tracing.py:{line + below}: {message}"):
            dtc.compile(fn)(x)


def test_std_with_an_integer_dtype_is_numpys() -> None:
    """numpy puts the square root back into the integer dtype: refused for an array,
    truncated for a scalar."""
    i = RNG.integers(0, 30, (2, 5))
    got = np.asarray(dtc.compile(lambda a: np.std(a, dtype=np.int64))(i))
    assert got.dtype == np.int64 and got == np.std(i, dtype=np.int64)
    with pytest.raises(errors.ShapeError, match="numpy.std with dtype=int64"):
        dtc.compile(lambda a: np.std(a, axis=1, dtype=np.int64))(i)


def test_extremes_of_an_empty_axis_are_refused_when_traced() -> None:
    """numpy refuses max/min and argmax/argmin over a zero-size axis (the result may be
    empty or not); so does tracing, at the user's line, instead of the run."""
    for shape, axis, ok in (((0, 0), 1, False), ((0, 3), 1, True), ((3, 0), 0, True),
                            ((0, 3), 0, False), ((0,), None, False)):
        x = np.zeros(shape, np.float32)
        for fn in (np.max, np.min, np.argmax, np.argmin):
            if ok:
                got = np.asarray(dtc.compile(lambda a, fn=fn, axis=axis: fn(a, axis=axis))(x))
                assert got.shape == fn(x, axis=axis).shape
            else:
                with pytest.raises(errors.ShapeError, match=r"test_tracing.py:\d+: (zero-size "
                                                            r"array|attempt to get arg)"):
                    dtc.compile(lambda a, fn=fn, axis=axis: fn(a, axis=axis))(x)
