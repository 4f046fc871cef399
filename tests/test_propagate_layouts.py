"""propagate-layouts: the layouts, relayouts and reasons it chooses on known models."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
from models import block, mlp, softmax

import dtensor_compiler as dtc
from dtensor_compiler.errors import Location, PassError, source_path
from dtensor_compiler.ir import factors, opdef
from dtensor_compiler.ir.core import LayoutOrigin, Level, Module, Operation
from dtensor_compiler.ir.parser import parse_module
from dtensor_compiler.ir.printer import format_reason, print_module
from dtensor_compiler.ir.reasons import OpRef
from dtensor_compiler.ir.sharding import MeshShape, Sharding
from dtensor_compiler.ir.types import TensorType
from dtensor_compiler.pass_manager import PassManager
from dtensor_compiler.passes._factor_sharding import FactorSpace
from dtensor_compiler.passes.insert_collectives import InsertCollectivesPass
from dtensor_compiler.passes.propagate_layouts import PropagateLayoutsPass
from dtensor_compiler.planner import relayout_cost
from dtensor_compiler.tracing import trace

MESH = MeshShape((("dp", 2), ("tp", 4)))
B, S, D, H, F = 4, 16, 64, 8, 256
DP_ = Sharding.of("dp", None)
COL = Sharding.of(None, "tp")
ROW = Sharding.of("tp", None)
REP1 = Sharding.of(None)


def propagate(fn, args: list[tuple[str, tuple[int, ...], Sharding | None]],
              out: Sharding | list[Sharding | None] | None = None,
              mesh: MeshShape = MESH) -> Module:
    """Trace `fn` and run propagate-layouts under the verifier."""
    types = [TensorType("f32", shape, sharding) for _, shape, sharding in args]
    module = trace(fn, types, [name for name, _, _ in args], mesh, out)
    PassManager([PropagateLayoutsPass()]).run(module)
    return module


def relayouts(module: Module) -> list[Operation]:
    return [op for op in module.main.ops if op.name == "relayout"]


def moves(module: Module) -> list[tuple[str, str, str]]:
    """(shape, source layout, target layout) of every relayout."""
    return [(str(list(op.type.shape)), op.operands[0].type.sharding.text(),
             op.type.sharding.text()) for op in relayouts(module)]


def collectives(module: Module) -> list[tuple[str, tuple[str, ...], str]]:
    """Run insert-collectives; (kind, mesh dims, result type) of every collective."""
    PassManager([InsertCollectivesPass()]).run(module)
    return [(op.name, tuple(op.attrs["mesh_dims"]), op.type.text()) for op in module.main.ops
            if opdef.lookup(op.name).collective is not None]


def why(op: Operation) -> str:
    assert op.why is not None
    return format_reason(op.why)


def layout_of(module: Module, op_name: str, index: int = 0) -> str:
    ops = [op for op in module.main.ops if op.name == op_name]
    return ops[index].type.sharding.text()


# -- models (tests/models.py) ----------------------------------------------------------------------


def block_args(x_layout: Sharding) -> list[tuple[str, tuple[int, ...], Sharding | None]]:
    return [("x", (B, S, D), x_layout), ("g1", (D,), REP1), ("wq", (D, D), COL),
            ("wk", (D, D), COL), ("wv", (D, D), COL), ("wo", (D, D), ROW), ("g2", (D,), REP1),
            ("w1", (D, F), COL), ("w2", (F, D), ROW)]


# -- factor shardings -----------------------------------------------------------------------------


def reshape_space(src: tuple[int, ...], dst: tuple[int, ...],
                  mesh: MeshShape = MESH) -> FactorSpace:
    rule = factors.reshape(src, dst)
    assert rule is not None
    return FactorSpace(rule, mesh)


def test_splitting_a_sharded_dim_puts_its_mesh_dim_on_the_major_factor() -> None:
    space = reshape_space((4, 16, 64), (4, 16, 8, 8))
    fs = space.project(0, Sharding.of("dp", None, "tp").dims)
    assert space.unproject(fs, space.result_index) == Sharding.of("dp", None, "tp", None).dims
    # back: heads sharded on tp merge into a model dim sharded on tp
    assert space.project(1, Sharding.of("dp", None, "tp", None).dims) == fs


def test_mesh_dims_fill_a_factor_before_moving_to_the_next() -> None:
    space = reshape_space((16,), (2, 8))
    fs = space.project(0, (("dp", "tp"),))
    assert fs == (("dp",), ("tp",))
    assert space.unproject(fs, space.result_index) == (("dp",), ("tp",))
    assert space.unproject(fs, 0) == (("dp", "tp"),)


def test_a_mesh_dim_that_does_not_divide_the_major_factor_is_dropped() -> None:
    space = reshape_space((4, 64), (4, 2, 32))
    assert space.project(0, Sharding.of(None, "tp").dims) == space.empty


def test_a_minor_factor_is_sharded_only_under_a_used_up_major_factor() -> None:
    space = reshape_space((8, 8), (64,))
    # rows on tp (4 of 8 rows per shard): the merged dim is sharded on tp alone
    fs = space.project(0, Sharding.of("tp", "dp").dims)
    assert fs == (("tp",), ())
    assert space.unproject(fs, space.result_index) == (("tp",),)
    assert space.normalize((("tp",), ("dp",))) == (("tp",), ())
    assert space.normalize((("dp", "tp"), ("dp",))) == (("dp", "tp"), ())


def test_regrouping_reshape_dims_must_be_whole() -> None:
    space = reshape_space((4, 6), (6, 4), MeshShape((("tp", 2),)))
    assert space.project(0, Sharding.of("tp", None).dims) == space.empty
    assert space.normalize((("tp",),)) == ((),)


def test_contracted_factor_gives_a_pending_sum() -> None:
    a, b = TensorType("f32", (8, 16)), TensorType("f32", (16, 4))
    rule = factors.matmul(a, b, TensorType("f32", (8, 4)))
    assert rule is not None
    space = FactorSpace(rule, MESH)
    fs = space.merge(space.project(0, Sharding.of("dp", "tp").dims),
                     space.project(1, Sharding.of("tp", None).dims))
    assert space.reduced(fs) == {"tp": "sum"}
    assert space.unproject(fs, space.result_index) == Sharding.of("dp", None).dims


# -- (a) Megatron MLP ------------------------------------------------------------------------------

MLP_IR = """\
    mesh<dp=2, tp=4>
    func @mlp(%x: f32[16,32] @ {dp, -}, %w1: f32[32,64] @ {-, tp}, %w2: f32[64,32] @ {tp, -}) -> (f32[16,32] @ {dp, -}) {
      %0 = matmul %x, %w1 : f32[16,64] loc("mlp.py":3)
      %1 = tanh %0 : f32[16,64] loc("mlp.py":3)
      %2 = matmul %1, %w2 : f32[16,32] loc("mlp.py":3)
      %3 = relayout %2 : f32[16,32] @ {dp, -} loc("mlp.py":3)  // why: out_layouts[0] of mlp
      return %3
    }
    """  # noqa: E501


def test_megatron_mlp_exact_ir() -> None:
    module = parse_module(textwrap.dedent(MLP_IR))
    PassManager([PropagateLayoutsPass()]).run(module)
    assert print_module(module, locations=True) == textwrap.dedent("""\
        mesh<dp=2, tp=4>
        func @mlp(%x: f32[16,32] @ {dp, -}, %w1: f32[32,64] @ {-, tp}, %w2: f32[64,32] @ {tp, -}) -> (f32[16,32] @ {dp, -}) {
          %0 = matmul %x, %w1 : f32[16,64] @ {dp, tp} loc("mlp.py":3)
          %1 = tanh %0 : f32[16,64] @ {dp, tp} loc("mlp.py":3)
          %2 = matmul %1, %w2 : f32[16,32] @ {dp, -} partial(tp:sum) loc("mlp.py":3)
          %3 = relayout %2 : f32[16,32] @ {dp, -} loc("mlp.py":3)  // why: out_layouts[0] of mlp
          return %3
        }
        """)  # noqa: E501
    assert [v.origin for v in module.main.values()] == [
        LayoutOrigin("%x"), LayoutOrigin("%w1"), LayoutOrigin("%w2"),
        LayoutOrigin("%x, %w1", OpRef("matmul", Location("mlp.py", 3))),
        LayoutOrigin("%x, %w1", OpRef("tanh", Location("mlp.py", 3))),
        LayoutOrigin("%x, %w1", OpRef("matmul", Location("mlp.py", 3))),
        LayoutOrigin("out_layouts[0]"),
    ]
    assert collectives(module) == [("all_reduce", ("tp",), "f32[16,32] @ {dp, -}")]


def test_megatron_mlp_traced() -> None:
    module = propagate(mlp, [("x", (16, 32), DP_), ("w1", (32, 64), COL),
                             ("w2", (64, 32), ROW)], DP_)
    assert [layout_of(module, "matmul", 0), layout_of(module, "tanh"),
            layout_of(module, "matmul", 1)] == ["{dp, tp}", "{dp, tp}", "{dp, -} partial(tp:sum)"]
    assert moves(module) == [("[16, 32]", "{dp, -} partial(tp:sum)", "{dp, -}")]
    assert [kind for kind, _, _ in collectives(module)] == ["all_reduce"]


# -- (b), (c) transformer block --------------------------------------------------------------------


def test_transformer_block_resolves_two_partial_sums_and_nothing_else() -> None:
    x_layout = Sharding.of("dp", None, None)
    module = propagate(block, block_args(x_layout), x_layout)
    assert moves(module) == [(f"[{B}, {S}, {D}]", "{dp, -, -} partial(tp:sum)", "{dp, -, -}")] * 2
    for op in relayouts(module):
        assert op.why is not None and "add cannot take a pending sum over tp" in why(op)
        assert op.loc is not None and op.loc.file == source_path(block.__code__.co_filename)
    # the reshape that splits D (sharded on tp) into heads keeps tp on the heads, for free
    assert [op.type.sharding.text() for op in module.main.ops if op.name == "reshape"] == [
        "{dp, -, tp, -}"] * 3 + ["{dp, -, tp}"]
    assert layout_of(module, "reduce_max") == "{dp, tp, -, -}"
    assert collectives(module) == [("all_reduce", ("tp",), f"f32[{B},{S},{D}] @ {{dp, -, -}}")] * 2


def test_sequence_sharded_block_resolves_partial_sums_with_reduce_scatters() -> None:
    seq = Sharding.of("dp", "tp", None)
    module = propagate(block, block_args(seq), seq)
    resolutions = [m for m in moves(module) if "partial" in m[1]]
    assert resolutions == [(f"[{B}, {S}, {D}]", "{dp, -, -} partial(tp:sum)", "{dp, tp, -}")] * 2
    # the normalised activations are gathered once per layernorm, for q, k and v together
    gathers = [op for op in relayouts(module) if not op.operands[0].type.sharding.partial]
    assert [(op.operands[0].type.sharding.text(), op.type.sharding.text(), len(op.result.uses))
            for op in gathers] == [("{dp, tp, -}", "{dp, -, -}", 3),
                                   ("{dp, tp, -}", "{dp, -, -}", 1)]
    assert gathers[0].why is not None and why(gathers[0]).endswith(
        "as {dp, -, -}: dim 1 gives up tp to dim 1 of %wq")
    kinds = [kind for kind, _, _ in collectives(module)]
    assert sorted(kinds) == ["all_gather", "all_gather", "reduce_scatter", "reduce_scatter"]


def test_output_is_deterministic() -> None:
    seq = Sharding.of("dp", "tp", None)
    first, second = (print_module(propagate(block, block_args(seq), seq), locations=True)
                     for _ in range(2))
    assert first == second


# -- (d) vocabulary-sharded softmax ----------------------------------------------------------------


@pytest.mark.parametrize("mesh", [MeshShape((("tp", 4),)), MESH], ids=["tp4", "dp2xtp4"])
def test_vocab_sharded_softmax_communicates_only_row_statistics(mesh: MeshShape) -> None:
    # (a vocabulary large enough that gathering the logits costs more than two all_reduces)
    module = propagate(softmax, [("logits", (256, 32768), COL)], COL, mesh)
    assert layout_of(module, "reduce_max") == "{-, -} partial(tp:max)"
    assert layout_of(module, "reduce_sum") == "{-, -} partial(tp:sum)"
    assert moves(module) == [("[256, 1]", "{-, -} partial(tp:max)", "{-, -}"),
                             ("[256, 1]", "{-, -} partial(tp:sum)", "{-, -}")]
    assert [(kind, op) for kind, _, op in collectives(module)] == [
        ("all_reduce", "f32[256,1] @ {-, -}"), ("all_reduce", "f32[256,1] @ {-, -}")]


# -- (e) conflicts are resolved by cost ------------------------------------------------------------


def test_conflict_goes_to_the_cheaper_side_not_the_first_operand() -> None:
    x_layout, w_layout = Sharding.of("tp", None), Sharding.of(None, "tp")
    module = propagate(lambda x, w: np.tanh(x @ w), [("x", (8, 64), x_layout),
                                                     ("w", (64, 512), w_layout)])
    # first-come would keep x's rows on tp and gather the 64x512 weight; the cost model gathers
    # the 8x64 activation instead
    greedy = relayout_cost(w_layout, Sharding.of(None, None), MESH, (64, 512))
    chosen = relayout_cost(x_layout, Sharding.of(None, None), MESH, (8, 64))
    assert chosen < greedy
    assert moves(module) == [("[8, 64]", "{tp, -}", "{-, -}")]
    assert layout_of(module, "matmul") == "{-, tp}"
    assert layout_of(module, "tanh") == "{-, tp}"
    (op,) = relayouts(module)
    assert op.why is not None and why(op).endswith("dim 0 gives up tp to dim 1 of %w")


def test_backward_conflict_is_resolved_by_cost() -> None:
    # y is unannotated; its layout comes from the op below it, where the wide operand wins
    def f(y, w):
        return (y * 2.0) @ w

    module = propagate(f, [("y", (8, 64), None), ("w", (64, 512), Sharding.of(None, "tp"))],
                       Sharding.of(None, "tp"))
    assert module.main.args[0].type.sharding == Sharding.of(None, None)
    assert moves(module) == []


# -- partial sums, unannotated values, pinned relayouts --------------------------------------------


def test_pending_sum_passes_through_a_linear_op_and_is_reduced_once() -> None:
    module = propagate(lambda x, w: (x @ w) * 0.5, [("x", (16, 64), COL), ("w", (64, 32), ROW)],
                       Sharding.of(None, None))
    assert layout_of(module, "multiply") == "{-, -} partial(tp:sum)"
    assert moves(module) == [("[16, 32]", "{-, -} partial(tp:sum)", "{-, -}")]


def test_cumsum_needs_its_scanned_axis_whole_and_carries_a_pending_sum() -> None:
    module = propagate(lambda x, w: np.cumsum(x @ w, axis=1),
                       [("x", (16, 64), Sharding.of("dp", "tp")), ("w", (64, 32), ROW)],
                       Sharding.of("dp", None))
    assert layout_of(module, "cumsum") == "{dp, -} partial(tp:sum)"
    assert moves(module) == [("[16, 32]", "{dp, -} partial(tp:sum)", "{dp, -}")]
    scan = propagate(lambda x: np.cumsum(x, axis=0), [("x", (16, 64), Sharding.of("dp", "tp"))],
                     Sharding.of(None, "tp"))
    assert moves(scan) == [("[16, 64]", "{dp, tp}", "{-, tp}")]
    (gather,) = relayouts(scan)
    assert why(gather).endswith("cumsum needs dim 0 whole")


@pytest.mark.parametrize(("dtype", "fn", "widened"), [
    ("bool", lambda a, b: (a @ b).sum(axis=1), "reduce_sum"),   # or-sum counted in i64
    ("bool", lambda a, b: (a @ b) * 2.5, "multiply"),          # bool to f64
    ("i8", lambda a, b: (a @ b) * np.arange(8), "multiply"),   # wrapping i8 sum to i64
    ("f16", lambda a, b: (a @ b) * np.float32(2), "multiply"),  # f16 sum to f32
])
def test_pending_sum_is_reduced_before_an_op_that_changes_its_dtype(dtype, fn, widened) -> None:
    types = [TensorType(dtype, (8, 16), COL), TensorType(dtype, (16, 8), ROW)]
    module = trace(fn, types, ["a", "b"], MESH)
    PassManager([PropagateLayoutsPass()]).run(module)
    assert moves(module)[0] == ("[8, 8]", "{-, -} partial(tp:sum)", "{-, -}")
    (op,) = [op for op in module.main.ops if op.name == widened]
    assert op.operands[0].owner is not None and op.operands[0].owner.name == "relayout"
    assert not op.type.sharding.partial


def test_pending_sums_of_bool_and_int8_give_numpy_values_end_to_end() -> None:
    mesh = dtc.create_mesh([("x", 2), ("y", 4)])
    in_layouts = (dtc.Layout([dtc.UNSHARDED, "y"], mesh), dtc.Layout(["y", dtc.UNSHARDED], mesh))
    rng = np.random.default_rng(0)
    a, b = rng.random((8, 16)) > 0.3, rng.random((16, 8)) > 0.3
    count = dtc.compile(lambda a, b: (a @ b).sum(axis=1), in_layouts=in_layouts)
    np.testing.assert_array_equal(np.asarray(count(a, b)), (a @ b).sum(axis=1))
    a8 = rng.integers(-128, 128, (8, 16)).astype(np.int8)
    b8 = rng.integers(-128, 128, (16, 8)).astype(np.int8)
    scaled = dtc.compile(lambda a, b: (a @ b) * np.arange(8), in_layouts=in_layouts)
    np.testing.assert_array_equal(np.asarray(scaled(a8, b8)), (a8 @ b8) * np.arange(8))


def test_returned_pending_sum_without_out_layout_is_reduced() -> None:
    module = propagate(lambda x, w: x @ w, [("x", (16, 64), COL), ("w", (64, 32), ROW)])
    assert moves(module) == [("[16, 32]", "{-, -} partial(tp:sum)", "{-, -}")]
    (op,) = relayouts(module)
    assert module.main.results == (op.result,)
    assert op.why is not None and "a returned value cannot take a pending sum over tp" in why(op)


def test_unannotated_arguments_take_the_pinned_output_layout() -> None:
    module = propagate(mlp, [("x", (16, 32), None), ("w1", (32, 64), None),
                             ("w2", (64, 32), None)], DP_)
    x, w1, w2 = module.main.args
    assert [a.type.sharding.text() for a in (x, w1, w2)] == ["{dp, -}", "{-, -}", "{-, -}"]
    assert x.origin is not None and x.origin.source == "out_layouts[0]"
    assert x.origin.via is not None and x.origin.via.name == "matmul"
    assert moves(module) == []


def test_unconstrained_unannotated_arguments_are_replicated() -> None:
    module = propagate(lambda x, y: x + y, [("x", (8, 4), None), ("y", (8, 4), None)])
    for value in module.main.values():
        assert value.type.sharding == Sharding.of(None, None)
        assert value.origin is not None and value.origin.source == "default: replicated"


def test_unannotated_weight_becomes_row_sharded_behind_a_column_sharded_one() -> None:
    module = propagate(mlp, [("x", (16, 32), DP_), ("w1", (32, 64), COL), ("w2", (64, 32), None)],
                       DP_)
    assert module.main.args[2].type.sharding == ROW
    assert moves(module) == [("[16, 32]", "{dp, -} partial(tp:sum)", "{dp, -}")]


def test_relayout_to_the_layout_a_value_has_is_removed() -> None:
    ir = """\
        mesh<tp=4>
        func @f(%x: f32[8,8] @ {tp, -}) -> (f32[8,8] @ {-, -}) {
          %0 = tanh %x : f32[8,8] loc("m.py":1)
          %1 = relayout %0 : f32[8,8] @ {tp, -} loc("m.py":2)  // why: dtc.relayout
          %2 = relayout %1 : f32[8,8] @ {-, -} loc("m.py":3)  // why: out_layouts[0] of f
          return %2
        }
        """
    module = parse_module(textwrap.dedent(ir))
    PassManager([PropagateLayoutsPass()]).run(module)
    assert print_module(module, locations=True) == textwrap.dedent("""\
        mesh<tp=4>
        func @f(%x: f32[8,8] @ {tp, -}) -> (f32[8,8] @ {-, -}) {
          %0 = tanh %x : f32[8,8] @ {tp, -} loc("m.py":1)
          %1 = relayout %0 : f32[8,8] @ {-, -} loc("m.py":3)  // why: out_layouts[0] of f
          return %1
        }
        """)


def test_pinned_pending_sum_is_returned_as_is() -> None:
    ir = """\
        mesh<tp=4>
        func @f(%x: f32[8,8] @ {-, tp}, %w: f32[8,8] @ {tp, -}) -> (f32[8,8] @ {-, -} partial(tp:sum)) {
          %0 = matmul %x, %w : f32[8,8]
          %1 = relayout %0 : f32[8,8] @ {-, -} partial(tp:sum)
          return %1
        }
        """  # noqa: E501
    module = parse_module(textwrap.dedent(ir))
    PassManager([PropagateLayoutsPass()]).run(module)
    assert print_module(module) == textwrap.dedent("""\
        mesh<tp=4>
        func @f(%x: f32[8,8] @ {-, tp}, %w: f32[8,8] @ {tp, -}) -> (f32[8,8] @ {-, -} partial(tp:sum)) {
          %0 = matmul %x, %w : f32[8,8] @ {-, -} partial(tp:sum)
          return %0
        }
        """)  # noqa: E501


def test_relayout_hands_its_target_back_to_an_unannotated_producer() -> None:
    ir = """\
        mesh<tp=4>
        func @f(%x: f32[8,8]) -> (f32[8,8] @ {-, tp}) {
          %0 = exp %x : f32[8,8] loc("m.py":1)
          %1 = relayout %0 : f32[8,8] @ {-, tp} loc("m.py":2)
          return %1
        }
        """
    module = parse_module(textwrap.dedent(ir))
    PassManager([PropagateLayoutsPass()]).run(module)
    assert print_module(module) == textwrap.dedent("""\
        mesh<tp=4>
        func @f(%x: f32[8,8] @ {-, tp}) -> (f32[8,8] @ {-, tp}) {
          %0 = exp %x : f32[8,8] @ {-, tp}
          return %0
        }
        """)
    assert module.main.args[0].origin == LayoutOrigin("out_layouts[0]",
                                                      OpRef("exp", Location("m.py", 1)))


def test_operand_that_must_be_whole_is_gathered_with_its_reason() -> None:
    ir = """\
        mesh<tp=4>
        func @f(%x: f32[8,8] @ {-, tp}) -> (i64[8]) {
          %0 = argmax %x {axis = 1, keepdims = false} : i64[8] loc("m.py":7)
          return %0
        }
        """
    module = parse_module(textwrap.dedent(ir))
    PassManager([PropagateLayoutsPass()]).run(module)
    (op,) = relayouts(module)
    assert why(op) == "argmax at m.py:7 needs %x as {-, -}: argmax needs dim 1 whole"


def test_a_barrier_without_a_declared_layout_makes_a_replicated_result() -> None:
    ir = """\
        mesh<tp=4>
        func @f(%x: f32[8,8] @ {tp, -}) -> (f32[8,8]) {
          %0 = relayout %x : f32[8,8]
          return %0
        }
        """
    module = parse_module(textwrap.dedent(ir))
    PassManager([PropagateLayoutsPass()]).run(module)
    assert module.main.results[0].type.sharding == Sharding.replicated(2)


def test_localized_module_is_rejected() -> None:
    module = parse_module(textwrap.dedent(MLP_IR))
    module.level = Level.LOCAL
    with pytest.raises(PassError, match="propagate-layouts expects a global module"):
        PassManager([PropagateLayoutsPass()], verify=False).run(module)
