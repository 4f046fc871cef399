"""The simulated executor: every op kind on stacked arrays against numpy on global arrays.

Modules are built in global shapes, localized by the `localize` pass and run on stacked inputs;
results are put back together with `from_stacked` and compared with the same numpy code on the
global arrays. Layouts are picked so that operands differ in their mesh extents (sharded against
replicated operands) and contracted dims leave pending reductions.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import numpy as np
import pytest
from ir_building import new_module

import dtensor_compiler as dtc
from dtensor_compiler.errors import ShapeError
from dtensor_compiler.ir import opdef
from dtensor_compiler.ir.builder import Builder
from dtensor_compiler.ir.core import Level, Module, Operation, Value
from dtensor_compiler.ir.opdef import InferContext
from dtensor_compiler.ir.ops.elementwise import BINARY_UFUNCS, UNARY_UFUNCS
from dtensor_compiler.ir.sharding import MeshShape, Sharding
from dtensor_compiler.ir.types import TensorType, dtype_name
from dtensor_compiler.pass_manager import PassContext, PassManager
from dtensor_compiler.passes import DEFAULT_PIPELINE
from dtensor_compiler.passes.localize import LocalizePass
from dtensor_compiler.runtime.executor import ExecContext, ExecutionError, KernelFn, KernelTable
from dtensor_compiler.runtime.kernels_numpy import NUMPY_KERNELS
from dtensor_compiler.runtime.simulated import SimulatedExecutor
from dtensor_compiler.runtime.stacked import from_stacked, to_stacked
from dtensor_compiler.tracing import trace

MESH = MeshShape((("x", 2), ("y", 2)))
MESH_3D = MeshShape((("x", 2), ("y", 2), ("z", 2)))
S = Sharding.of
RNG = np.random.default_rng(0)

Args = dict[str, tuple[np.ndarray, Sharding]]
Body = Callable[[Builder, list[Value]], list[Value]]


def simulate(mesh: MeshShape, args: Args, body: Body) -> list[np.ndarray]:
    """Build `body` over `args` in global shapes, localize it, run it, return global values."""
    module, b, values = new_module(mesh, {
        name: (dtype_name(a.dtype), a.shape, s) for name, (a, s) in args.items()})
    module.main.set_results(body(b, values))
    LocalizePass().apply(module, PassContext())
    stacked = [to_stacked(a, s, mesh) for a, s in args.values()]
    outs = SimulatedExecutor(module).run_stacked(stacked)
    results = []
    for value, out in zip(module.main.results, outs):
        assert value.type.sharding is not None
        results.append(from_stacked(out, value.type.sharding, mesh))
    return results


def normal(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape)


def ints(*shape: int, low: int = 1, high: int = 9) -> np.ndarray:
    return RNG.integers(low, high, size=shape).astype(np.int32)


def all_reduce(b: Builder, v: Value, mesh_dims: tuple[str, ...], op: str = "sum") -> Value:
    assert v.type.sharding is not None
    partial = {m: o for m, o in v.type.sharding.partial if m not in mesh_dims}
    return b.create("all_reduce", [v], {"mesh_dims": mesh_dims, "op": op},
                    sharding=Sharding(v.type.sharding.dims, tuple(partial.items())))


@pytest.mark.parametrize("name", UNARY_UFUNCS)
def test_unary_ufuncs(name: str) -> None:
    x = ints(4, 6) if name == "invert" else RNG.uniform(0.1, 0.9, (4, 6))
    with np.errstate(all="ignore"):
        (out,) = simulate(MESH, {"x": (x, S("x", "y"))},
                          lambda b, v: [b.create(name, v, sharding=S("x", "y"))])
        np.testing.assert_allclose(out, getattr(np, name)(x))


_INT_BINARY = {"bitwise_and", "bitwise_or", "bitwise_xor", "left_shift", "right_shift", "gcd",
               "lcm"}


@pytest.mark.parametrize("name", BINARY_UFUNCS)
def test_binary_ufuncs_broadcast_on_local_dims(name: str) -> None:
    # [4,6] sharded over (x, y) against [6] sharded over y: mesh extents (2,2) and (1,2)
    a = ints(4, 6) if name in _INT_BINARY else RNG.uniform(0.5, 2.0, (4, 6))
    c = ints(6) if name in _INT_BINARY | {"ldexp"} else RNG.uniform(0.5, 2.0, 6)
    (out,) = simulate(MESH, {"a": (a, S("x", "y")), "c": (c, S("y"))},
                      lambda b, v: [b.create(name, v, sharding=S("x", "y"))])
    np.testing.assert_allclose(out, getattr(np, name)(a, c))


def test_where_with_operands_of_three_ranks() -> None:
    cond = normal(4, 6) > 0
    a, c = normal(6), normal(1, 1)
    (out,) = simulate(MESH, {"cond": (cond, S("x", "y")), "a": (a, S("y")),
                             "c": (c, S(None, None))},
                      lambda b, v: [b.create("where", v, sharding=S("x", "y"))])
    np.testing.assert_array_equal(out, np.where(cond, a, c))


def test_megatron_mlp() -> None:
    x, w1, w2 = normal(8, 4), normal(4, 16), normal(16, 4)

    def body(b: Builder, v: list[Value]) -> list[Value]:
        x, w1, w2 = v
        h = b.create("tanh", [b.create("matmul", [x, w1], sharding=S("x", "y"))],
                     sharding=S("x", "y"))
        y = b.create("matmul", [h, w2], sharding=S("x", None, partial={"y": "sum"}))
        return [all_reduce(b, y, ("y",))]

    (out,) = simulate(MESH, {"x": (x, S("x", None)), "w1": (w1, S(None, "y")),
                             "w2": (w2, S("y", None))}, body)
    np.testing.assert_allclose(out, np.tanh(x @ w1) @ w2)


def test_matmul_broadcasts_batch_dims_of_different_ranks() -> None:
    a, c = normal(2, 4, 8, 4), normal(4, 4, 6)
    (out,) = simulate(MESH_3D, {"a": (a, S(None, "z", "x", None)), "c": (c, S("z", None, "y"))},
                      lambda b, v: [b.create("matmul", v, sharding=S(None, "z", "x", "y"))])
    np.testing.assert_allclose(out, a @ c)


def test_einsum_with_a_sharded_contraction() -> None:
    a, c = normal(2, 8, 4), normal(4, 6)

    def body(b: Builder, v: list[Value]) -> list[Value]:
        p = b.create("einsum", v, {"spec": "bij,jk->kbi"},
                     sharding=S(None, None, "x", partial={"y": "sum"}))
        return [all_reduce(b, p, ("y",))]

    (out,) = simulate(MESH, {"a": (a, S(None, "x", "y")), "c": (c, S("y", None))}, body)
    np.testing.assert_allclose(out, np.einsum("bij,jk->kbi", a, c))


@pytest.mark.parametrize("spec", [
    "bsd,bsh->dh",   # a weight gradient: batch and sequence contracted
    "ij,jk->kji",    # the result in another order
    "ij,k->ijk",     # an outer product: nothing contracted
    "ijx,jky->ki",   # letters of one operand only, summed first
    "bi,bi->b",      # batch only
    "i,i->",         # to a scalar
])
def test_two_operand_einsums_are_one_batched_matmul(spec: str) -> None:
    """Two-operand einsums run as one matmul per device (`_pairwise_einsum`); every kind of
    letter, the first sharded (so that the operands' stacked mesh extents differ where the
    other operand lacks it)."""
    subs, out = spec.split("->")
    a, c = subs.split(",")
    sizes = dict(zip("bsdhijkxy", (4, 3, 4, 2, 4, 6, 4, 2, 3)))
    x, y = normal(*(sizes[ch] for ch in a)), normal(*(sizes[ch] for ch in c))
    shard_x = S(*("x" if i == 0 else None for i in range(len(a))))
    shard_y = S(*("x" if ch == a[0] else None for ch in c))  # a shared letter alike

    def body(b: Builder, v: list[Value]) -> list[Value]:
        made = b.create("einsum", v, {"spec": spec},
                        sharding=S(*("x" if ch == a[0] else None for ch in out),
                                   partial={} if a[0] in out else {"x": "sum"}))
        return [made if a[0] in out else all_reduce(b, made, ("x",))]

    (got,) = simulate(MESH, {"a": (x, shard_x), "c": (y, shard_y)}, body)
    np.testing.assert_allclose(got, np.einsum(spec, x, y), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name,kind", [("reduce_sum", "sum"), ("reduce_max", "max"),
                                       ("reduce_min", "min"), ("reduce_prod", "prod")])
def test_reductions_over_sharded_and_unsharded_axes(name: str, kind: str) -> None:
    x = RNG.uniform(0.5, 1.5, (4, 6, 2))

    def body(b: Builder, v: list[Value]) -> list[Value]:
        sharded = b.create(name, v, {"axes": (0, 2), "keepdims": False},
                           sharding=S("y", partial={"x": kind}))
        local = b.create(name, v, {"axes": (2,), "keepdims": True},
                         sharding=S("x", "y", None))
        return [all_reduce(b, sharded, ("x",), kind), local]

    out_sharded, out_local = simulate(MESH, {"x": (x, S("x", "y", None))}, body)
    reduce = {"sum": np.sum, "max": np.max, "min": np.min, "prod": np.prod}[kind]
    np.testing.assert_allclose(out_sharded, reduce(x, axis=(0, 2)))
    np.testing.assert_allclose(out_local, reduce(x, axis=2, keepdims=True))


def test_integer_sums_promote_like_numpy() -> None:
    x = ints(4, 6)

    def body(b: Builder, v: list[Value]) -> list[Value]:
        p = b.create("reduce_sum", v, {"axes": (1,), "keepdims": False},
                     sharding=S("x", partial={"y": "sum"}))
        return [all_reduce(b, p, ("y",))]

    (out,) = simulate(MESH, {"x": (x, S("x", "y"))}, body)
    assert out.dtype == np.sum(x).dtype
    np.testing.assert_array_equal(out, x.sum(axis=1))


@pytest.mark.parametrize("name", ["argmax", "argmin"])
def test_arg_reductions(name: str) -> None:
    x = normal(4, 6)
    out, kept = simulate(MESH, {"x": (x, S("x", None))}, lambda b, v: [
        b.create(name, v, {"axis": 1, "keepdims": False}, sharding=S("x")),
        b.create(name, v, {"axis": 1, "keepdims": True}, sharding=S("x", None))])
    np.testing.assert_array_equal(out, getattr(np, name)(x, axis=1))
    np.testing.assert_array_equal(kept, getattr(np, name)(x, axis=1, keepdims=True))


def test_transpose_reshape_and_broadcast_to() -> None:
    x, r = normal(4, 6, 2), normal(6)

    def body(b: Builder, v: list[Value]) -> list[Value]:
        x, r = v
        t = b.create("transpose", [x], {"perm": (2, 0, 1)}, sharding=S(None, "x", "y"))
        m = b.create("reshape", [t], declared=TensorType("f64", (2, 4, 2, 3), S(None, "x", "y",
                                                                               None)))
        bc = b.create("broadcast_to", [r], declared=TensorType("f64", (4, 6), S("x", "y")))
        return [m, bc]

    m, bc = simulate(MESH, {"x": (x, S("x", "y", None)), "r": (r, S("y"))}, body)
    np.testing.assert_array_equal(m, x.transpose(2, 0, 1).reshape(2, 4, 2, 3))
    np.testing.assert_array_equal(bc, np.broadcast_to(r, (4, 6)))


def test_slice_concatenate_and_astype() -> None:
    x, c = normal(8, 6), normal(2, 6)

    def body(b: Builder, v: list[Value]) -> list[Value]:
        x, c = v
        s = b.create("slice", [x], {"start": (1, 0), "stop": (7, 6), "step": (2, 1)},
                     sharding=S(None, "y"))
        cat = b.create("concatenate", [s, c], {"axis": 0}, sharding=S(None, "y"))
        return [b.create("astype", [cat], declared=TensorType("f32", (5, 6), S(None, "y")))]

    (out,) = simulate(MESH, {"x": (x, S(None, "y")), "c": (c, S(None, "y"))}, body)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.concatenate([x[1:7:2], c]).astype(np.float32))


@pytest.mark.parametrize("axis,idx_sharding,table_sharding,out_sharding", [
    (0, S("x"), S(None, "y"), S("x", "y")),
    (0, S(None), S(None, ("y", "x")), S(None, ("y", "x"))),
    (1, S("y", None), S("x", None, None), S("x", "y", None, None)),
])
def test_take_with_per_device_indices(axis: int, idx_sharding: Sharding,
                                      table_sharding: Sharding, out_sharding: Sharding) -> None:
    table = normal(*((10, 8) if axis == 0 else (4, 5, 2)))
    idx = RNG.integers(0, table.shape[axis], size=(4,) if axis == 0 else (2, 3)).astype(np.int64)
    (out,) = simulate(MESH, {"table": (table, table_sharding), "idx": (idx, idx_sharding)},
                      lambda b, v: [b.create("take", v, {"axis": axis}, sharding=out_sharding)])
    np.testing.assert_array_equal(out, np.take(table, idx, axis=axis))


def test_full_iota_and_constant_follow_their_layouts() -> None:
    value = np.arange(48.0).reshape(8, 6)

    def body(b: Builder, v: list[Value]) -> list[Value]:
        f = b.create("full", [], {"value": 2.5}, declared=TensorType("f64", (8, 6), S("x", "y")))
        iota0 = b.create("iota", [], {"dimension": 0},
                         declared=TensorType("i32", (8, 6), S(("y", "x"), None)))
        iota1 = b.create("iota", [], {"dimension": 1},
                         declared=TensorType("f32", (8, 6), S("x", "y")))
        const = b.create("constant", [], {"value": value},
                         declared=TensorType("f64", (8, 6), S("y", None)))
        return [b.create("add", [v[0], f], sharding=S("x", "y")), iota0, iota1, const]

    x = normal(8, 6)
    added, iota0, iota1, const = simulate(MESH, {"x": (x, S("x", "y"))}, body)
    np.testing.assert_array_equal(added, x + 2.5)
    assert iota0.dtype == np.int32 and iota1.dtype == np.float32
    np.testing.assert_array_equal(iota0, np.broadcast_to(np.arange(8)[:, None], (8, 6)))
    np.testing.assert_array_equal(iota1, np.broadcast_to(np.arange(6.0), (8, 6)))
    np.testing.assert_array_equal(const, value)


@pytest.mark.parametrize("op", ["sum", "max"])
def test_sources_with_pending_reductions_hold_the_value_once(op: str) -> None:
    def body(b: Builder, v: list[Value]) -> list[Value]:
        pending = S(None, "y", partial={"x": op})
        f = b.create("full", [], {"value": 3.0}, declared=TensorType("f64", (4, 6), pending))
        i = b.create("iota", [], {"dimension": 1}, declared=TensorType("i64", (4, 6), pending))
        return [all_reduce(b, f, ("x",), op), all_reduce(b, i, ("x",), op)]

    f, i = simulate(MESH, {}, body)
    np.testing.assert_array_equal(f, np.full((4, 6), 3.0))
    np.testing.assert_array_equal(i, np.broadcast_to(np.arange(6), (4, 6)))


def test_collective_ops_in_a_program() -> None:
    x = normal(16, 8)

    def body(b: Builder, v: list[Value]) -> list[Value]:
        g = b.create("all_gather", v, {"mesh_dims": ("z",), "axis": 0}, sharding=S("x", "y"))
        a = b.create("all_to_all", [g], {"mesh_dims": ("y",), "split_axis": 0,
                                         "concat_axis": 1}, sharding=S(("x", "y"), None))
        s = b.create("local_slice", [a], {"mesh_dims": ("z",), "axis": 1},
                     sharding=S(("x", "y"), "z"))
        p = b.create("reduce_sum", [s], {"axes": (1,), "keepdims": False},
                     sharding=S(("x", "y"), partial={"z": "sum"}))
        r = b.create("reduce_scatter", [p], {"mesh_dims": ("z",), "op": "sum", "axis": 0},
                     sharding=S(("x", "y", "z")))
        return [s, r]

    s, r = simulate(MESH_3D, {"x": (x, S(("x", "z"), "y"))}, body)
    np.testing.assert_array_equal(s, x)
    np.testing.assert_allclose(r, x.sum(axis=1))


def _local_module() -> tuple[Module, list[Value]]:
    """tanh over a [4] local block of x sharded over the 4 devices of a 1-D mesh."""
    mesh = MeshShape((("x", 4),))
    module, b, (x,) = new_module(mesh, {"x": ("f32", (4,), S("x"))}, level=Level.LOCAL)
    return module, [x, b.create("tanh", [x], sharding=S("x"))]


def test_runs_hand_built_localized_modules() -> None:
    module, (x, y) = _local_module()
    module.main.set_results([y])
    inp = np.arange(16, dtype=np.float32).reshape(4, 4)
    (out,) = SimulatedExecutor(module).run_stacked([inp])
    np.testing.assert_array_equal(out, np.tanh(inp))


def test_rejects_global_modules_and_bad_inputs() -> None:
    module, (x, y) = _local_module()
    module.main.set_results([y])
    with pytest.raises(ShapeError, match=r"input %x of type f32\[4\] @ \{x\} must be a "
                                         r"float32 array of shape \[4, 4\], got float32 "
                                         r"\[1, 4\]"):
        SimulatedExecutor(module).run_stacked([np.zeros((1, 4), np.float32)])
    with pytest.raises(ShapeError, match="takes 1 inputs, got 0"):
        SimulatedExecutor(module).run_stacked([])
    module.level = Level.GLOBAL
    with pytest.raises(ExecutionError, match="only localized modules run"):
        SimulatedExecutor(module)


def test_a_result_that_breaks_the_stacked_convention_is_an_internal_error() -> None:
    module, (x, y) = _local_module()
    y.type = y.type.with_sharding(S(None))  # claims replicated, but differs per device
    module.main.set_results([y])
    with pytest.raises(ExecutionError, match=r"tanh produced stacked shape \[4, 4\]; its type "
                                             r"f32\[4\] @ \{-\} .* needs \[1, 4\]"):
        SimulatedExecutor(module).run_stacked([np.zeros((4, 4), np.float32)])


def test_missing_kernels_are_reported() -> None:
    module, (x, y) = _local_module()
    module.main.set_results([y])
    with pytest.raises(ExecutionError, match="the empty backend has no kernel for op 'tanh'"):
        SimulatedExecutor(module, KernelTable("empty"))


def test_values_are_released_after_their_last_use() -> None:
    module, (x, y) = _local_module()
    b = Builder(module.main, InferContext(module.mesh, level=Level.LOCAL))
    z = b.create("negative", [b.create("exp", [y], sharding=S("x"))], sharding=S("x"))
    module.main.set_results([z])
    produced: list[weakref.ref] = []
    alive_at_negative: list[bool] = []

    def tanh(op: Operation, ctx: ExecContext) -> KernelFn:
        def run(x: np.ndarray) -> np.ndarray:
            out = np.tanh(x)
            produced.append(weakref.ref(out))
            return out
        return run

    def negative(op: Operation, ctx: ExecContext) -> KernelFn:
        def run(x: np.ndarray) -> np.ndarray:
            alive_at_negative.append(produced[0]() is not None)
            return np.negative(x)
        return run

    kernels = KernelTable("watching")
    kernels.register(opdef.lookup("tanh"))(tanh)
    kernels.register(opdef.lookup("negative"))(negative)
    exp = NUMPY_KERNELS.get("exp")
    assert exp is not None
    kernels.register(opdef.lookup("exp"))(exp)
    inp = np.ones((4, 4), np.float32)
    (out,) = SimulatedExecutor(module, kernels).run_stacked([inp])
    np.testing.assert_allclose(out, -np.exp(np.tanh(inp)), rtol=1e-6)
    assert alive_at_negative == [False]


# -- traced numpy functions through the default pipeline ---------------------------------------


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _attention_scores(x: np.ndarray, wq: np.ndarray) -> np.ndarray:
    q = (x @ wq).reshape(4, 8, 4, 8)
    return np.einsum("bshd,bthd->bhst", q, q).max(axis=-1)


def _embedding_bag(table: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return np.take(table, idx, axis=0).sum(axis=1)


def _mixed(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    joined = np.concatenate([x[:, :4], x[:, 4:] * 2], axis=1)
    return np.where(joined > 0, joined, 0.0).T + np.arange(8)[:, None], np.argmax(x, axis=1)


MESH_2x4 = MeshShape((("dp", 2), ("tp", 4)))
TRACED = [
    (_softmax, MESH_2x4, {"x": ("f64", (8, 16), S("dp", "tp"))}),
    (_attention_scores, MESH_2x4, {"x": ("f64", (4, 8, 16), S("dp", None, None)),
                                   "wq": ("f64", (16, 32), S(None, "tp"))}),
    (_attention_scores, MESH_3D, {"x": ("f64", (4, 8, 16), S(("x", "z"), None, None)),
                                  "wq": ("f64", (16, 32), S(None, "y"))}),
    (_embedding_bag, MESH_2x4, {"table": ("f64", (10, 16), S(None, "tp")),
                                "idx": ("i64", (8, 3), S("dp", None))}),
    (_mixed, MESH_2x4, {"x": ("f64", (16, 8), S("dp", None))}),
]


@pytest.mark.parametrize("fn,mesh,args", TRACED, ids=lambda p: getattr(p, "__name__", ""))
def test_traced_functions_match_numpy(fn: Callable, mesh: MeshShape,
                                      args: dict[str, tuple[str, tuple[int, ...], Sharding]]
                                      ) -> None:
    types = [TensorType(d, shape, s) for d, shape, s in args.values()]
    module = trace(fn, types, list(args), mesh)
    PassManager.parse(DEFAULT_PIPELINE).run(module)
    inputs = [normal(*t.shape) if t.dtype == "f64" else RNG.integers(0, 10, t.shape)
              for t in types]
    outs = SimulatedExecutor(module).run_stacked(
        [to_stacked(a, t.sharding, mesh) for a, t in zip(inputs, types)])
    expected = fn(*inputs)
    for out, value, want in zip(outs, module.main.results,
                                expected if isinstance(expected, tuple) else (expected,)):
        assert value.type.sharding is not None
        np.testing.assert_allclose(from_stacked(out, value.type.sharding, mesh), want,
                                   rtol=1e-12)


def _every_kind_of_op(x: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, ...]:
    rows = np.take(x, idx, axis=0)
    mixed = np.where(x > 0, x, np.arange(6.0, like=x)) + np.full((4, 6), 2.0)
    joined = np.concatenate([x[1:3], np.concatenate([x[:, ::2], x[:, 1::2]], axis=1)[:2]])
    joined = joined.astype(np.float32)
    scores = np.einsum("ij,kj->ik", x, x) @ x.T.reshape(4, 6)
    return (rows, mixed.sum(axis=1), joined, scores.max(axis=0), np.argmax(x, axis=1),
            np.broadcast_to(x[:, :1], (4, 6)) * np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]))


def test_every_kernel_runs_on_a_mesh_without_dims() -> None:
    mesh = MeshShape(())
    x = normal(4, 6)
    idx = np.array([[3, 0], [1, 1]])
    types = [TensorType("f64", x.shape, Sharding.replicated(2)),
             TensorType("i64", idx.shape, Sharding.replicated(2))]
    module = trace(_every_kind_of_op, types, ["x", "idx"], mesh)
    PassManager.parse(DEFAULT_PIPELINE).run(module)
    names = {op.name for op in module.main.ops}
    assert {"take", "iota", "full", "constant", "einsum", "concatenate", "slice"} <= names
    outs = SimulatedExecutor(module).run_stacked([x, idx])
    for out, want in zip(outs, _every_kind_of_op(x, idx)):
        np.testing.assert_allclose(out, want, rtol=1e-12)


def test_a_result_broadcast_on_the_first_run_is_broadcast_on_every_later_one() -> None:
    mesh = dtc.create_mesh([("dp", 2), ("tp", 4)])
    relu = dtc.compile(lambda x: np.where(x > 0, x, np.zeros_like(x)),
                       in_layouts=dtc.Layout(["dp", dtc.UNSHARDED], mesh))
    ones = dtc.compile(lambda: np.ones(8, np.float32),
                       out_layouts=dtc.Layout(["tp"], mesh))
    x = normal(8, 4)
    for _ in range(3):
        np.testing.assert_array_equal(np.asarray(relu(x)), np.maximum(x, 0))
        np.testing.assert_array_equal(np.asarray(ones()), np.ones(8, np.float32))
    source = relu.lower(x)._executor.program.source  # type: ignore[union-attr]
    assert source is not None and "fix" in source  # the zeros needed broadcasting


def test_contraction_kernels_keep_integer_dtypes_and_take_empty_dims() -> None:
    """A two-operand einsum summing a letter of one operand keeps int32 as numpy's einsum
    does; a matmul contracting an empty dim gives zeros."""
    a, b = np.arange(24, dtype=np.int32).reshape(3, 4, 2), np.ones((4, 5), np.int32)
    got = dtc.compile(lambda a, b: np.einsum("ijx,jy->iy", a, b))(a, b)
    assert np.asarray(got).dtype == np.int32
    np.testing.assert_array_equal(np.asarray(got), np.einsum("ijx,jy->iy", a, b))
    x, w = np.ones((2, 3, 0)), np.ones((0, 5))
    np.testing.assert_array_equal(np.asarray(dtc.compile(lambda x, w: x @ w)(x, w)),
                                  np.zeros((2, 3, 5)))
