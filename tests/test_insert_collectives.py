"""insert-collectives: relayout ops become the planned collectives, with exact IR checked."""

from __future__ import annotations

import textwrap

import pytest

from dtensor_compiler.cost import CostModel, Link
from dtensor_compiler.errors import Location, PassError, PlanningError
from dtensor_compiler.ir.builder import Builder
from dtensor_compiler.ir.core import Function, LayoutOrigin, Module, Value
from dtensor_compiler.ir.opdef import InferContext
from dtensor_compiler.ir.parser import parse_module
from dtensor_compiler.ir.printer import print_module
from dtensor_compiler.ir.reasons import Planned, Written
from dtensor_compiler.ir.sharding import MeshShape, Sharding
from dtensor_compiler.ir.types import TensorType
from dtensor_compiler.pass_manager import PassContext, PassManager, parse_pass
from dtensor_compiler.passes.insert_collectives import InsertCollectivesPass


def run(text: str, ctx: PassContext | None = None) -> str:
    """Parse, run the pass under the verifier, and print with locations."""
    module = parse_module(textwrap.dedent(text))
    PassManager([InsertCollectivesPass()], ctx=ctx).run(module)
    return print_module(module, locations=True)


def test_pending_sum_to_sharded_becomes_one_reduce_scatter() -> None:
    out = run("""\
        mesh<dp=2, tp=4>
        func @f(%x: f32[16,8] @ {-, -} partial(tp:sum)) -> (f32[16,8] @ {tp, -}) {
          %0 = relayout %x : f32[16,8] @ {tp, -} loc("model.py":12)  // why: out_layouts[0]
          return %0
        }
        """)
    assert out == textwrap.dedent("""\
        mesh<dp=2, tp=4>
        func @f(%x: f32[16,8] @ {-, -} partial(tp:sum)) -> (f32[16,8] @ {tp, -}) {
          %0 = reduce_scatter %x {mesh_dims = [tp], op = sum, axis = 0} : f32[16,8] @ {tp, -} loc("model.py":12)  // why: out_layouts[0]
          return %0
        }
        """)  # noqa: E501


def test_multi_step_relayout_emits_each_step_with_its_loc_and_why() -> None:
    out = run("""\
        mesh<dp=2, tp=4>
        func @f(%w: f32[16,8] @ {dp, tp}) -> (f32[16,8] @ {tp, dp}) {
          %0 = relayout %w : f32[16,8] @ {tp, dp} loc("model.py":13)  // why: matmul wants {tp, dp}
          %1 = negative %0 : f32[16,8] @ {tp, dp} loc("model.py":14)
          return %1
        }
        """)
    assert out.splitlines()[2:7] == [
        '  %0 = all_gather %w {mesh_dims = [dp], axis = 0} : f32[16,8] @ {-, tp}'
        ' loc("model.py":13)  // why: matmul wants {tp, dp}',
        '  %1 = all_to_all %0 {mesh_dims = [tp], split_axis = 0, concat_axis = 1}'
        ' : f32[16,8] @ {tp, -} loc("model.py":13)  // why: matmul wants {tp, dp}',
        '  %2 = local_slice %1 {mesh_dims = [dp], axis = 1} : f32[16,8] @ {tp, dp}'
        ' loc("model.py":13)  // why: matmul wants {tp, dp}',
        '  %3 = negative %2 : f32[16,8] @ {tp, dp} loc("model.py":14)',
        "  return %3",
    ]


def test_every_relayout_in_the_module_is_replaced() -> None:
    out = run("""\
        mesh<x=2, y=2>
        func @f(%a: f32[8,8] @ {x, -} partial(y:sum), %b: f32[8,8] @ {-, -}) -> (f32[8,8] @ {x, -}) {
          %0 = relayout %a : f32[8,8] @ {x, -}  // why: a
          %1 = relayout %b : f32[8,8] @ {x, -}  // why: b
          %2 = add %0, %1 : f32[8,8] @ {x, -}
          return %2
        }

        func @g(%c: f32[8,8] @ {(x, y), -}) -> (f32[8,8] @ {-, -}) {
          %0 = relayout %c : f32[8,8] @ {-, -}  // why: c
          return %0
        }
        """)  # noqa: E501
    assert out == textwrap.dedent("""\
        mesh<x=2, y=2>
        func @f(%a: f32[8,8] @ {x, -} partial(y:sum), %b: f32[8,8] @ {-, -}) -> (f32[8,8] @ {x, -}) {
          %0 = all_reduce %a {mesh_dims = [y], op = sum} : f32[8,8] @ {x, -}  // why: a
          %1 = local_slice %b {mesh_dims = [x], axis = 0} : f32[8,8] @ {x, -}  // why: b
          %2 = add %0, %1 : f32[8,8] @ {x, -}
          return %2
        }

        func @g(%c: f32[8,8] @ {(x, y), -}) -> (f32[8,8] @ {-, -}) {
          %0 = all_gather %c {mesh_dims = [x, y], axis = 0} : f32[8,8] @ {-, -}  // why: c
          return %0
        }
        """)  # noqa: E501


def test_relayout_to_the_same_layout_is_removed() -> None:
    out = run("""\
        mesh<x=2, y=2>
        func @f(%a: f32[8,8] @ {x, y}) -> (f32[8,8] @ {x, y}, f32[8,8] @ {x, y}) {
          %0 = relayout %a : f32[8,8] @ {x, y}  // why: nothing to do
          %1 = exp %0 : f32[8,8] @ {x, y}
          return %1, %0
        }
        """)
    assert out.splitlines()[2:4] == ["  %0 = exp %a : f32[8,8] @ {x, y}", "  return %0, %a"]


def test_the_context_cost_model_picks_the_plan() -> None:
    text = """\
        mesh<x=2, y=4>
        func @f(%a: f32[16,16] @ {(x, y), -}) -> (f32[16,16] @ {-, -}) {
          %0 = relayout %a : f32[16,16] @ {-, -}  // why: r
          return %0
        }
        """
    assert run(text).splitlines()[2] == (
        "  %0 = all_gather %a {mesh_dims = [x, y], axis = 0} : f32[16,16] @ {-, -}  // why: r")
    slow_x = PassContext(cost_model=CostModel().with_link("x", Link(latency=100e-6)))
    assert [line.split(" {")[0] for line in run(text, slow_x).splitlines()[2:4]] == [
        "  %0 = all_gather %a", "  %1 = all_gather %0"]


def test_the_last_collective_takes_over_the_relayout_origin() -> None:
    mesh = MeshShape((("x", 2), ("y", 2)))
    arg = Value(TensorType("f32", (8, 8), Sharding.of("x", None)), name_hint="a")
    func = Function("f", [arg])
    relaid = Builder(func, InferContext(mesh)).create(
        "relayout", [arg], sharding=Sharding.of(None, "x"), loc=Location("m.py", 3),
        why=Written("w"))
    origin = LayoutOrigin("out_layouts[0]")
    relaid.origin = origin
    func.set_results([relaid])
    module = Module(mesh, [func])
    InsertCollectivesPass().apply(module, PassContext())
    (op,) = func.ops
    assert (op.name, op.attrs, op.loc, op.why) == (
        "all_to_all", {"mesh_dims": ("x",), "split_axis": 1, "concat_axis": 0},
        Location("m.py", 3), Planned(Written("w"), Sharding.of(None, "x")))
    assert func.results == (op.result,) and op.result.origin is origin
    assert arg.uses == [(op, 0)]


def test_a_relayout_without_a_reason_says_where_it_goes() -> None:
    out = run("""\
        mesh<x=2>
        func @f(%a: f32[8] @ {-}) -> (f32[8] @ {x}) {
          %0 = relayout %a : f32[8] @ {x}
          return %0
        }
        """)
    assert out.splitlines()[2].endswith("  // why: relayout to {x}")


def test_an_impossible_relayout_names_the_line_and_both_layouts() -> None:
    mesh = MeshShape((("x", 4),))
    arg = Value(TensorType("f32", (6,), Sharding.of(None)), name_hint="a")
    func = Function("f", [arg])
    out = Builder(func, InferContext(mesh)).create(
        "relayout", [arg], sharding=Sharding.of("y"), loc=Location("m.py", 7))
    func.set_results([out])
    with pytest.raises(PlanningError, match=r"^m\.py:7: no relayout plan from \{-\} to \{y\}.*"
                                            r"mesh dim 'y' is not in mesh<x=4>"):
        InsertCollectivesPass().apply(Module(mesh, [func]), PassContext())


def test_nothing_changes_when_a_later_relayout_has_no_plan() -> None:
    module = parse_module(textwrap.dedent("""\
        mesh<x=4>
        func @f(%a: f32[8] @ {-} partial(x:sum), %b: f32[6] @ {-}) -> (f32[8] @ {-}, f32[6] @ {y}) {
          %0 = relayout %a : f32[8] @ {-}
          %1 = relayout %b : f32[6] @ {y}
          return %0, %1
        }
        """))  # noqa: E501
    before = print_module(module)
    with pytest.raises(PlanningError, match="no relayout plan from"):
        InsertCollectivesPass().apply(module, PassContext())
    assert print_module(module) == before


def test_a_localized_module_is_rejected() -> None:
    module = parse_module("mesh<x=2> local\nfunc @f(%a: f32[4] @ {x}) -> (f32[4] @ {x}) {\n"
                          "  return %a\n}\n")
    with pytest.raises(PassError, match="insert-collectives expects a global module, but this "
                                        "one is local"):
        PassManager([InsertCollectivesPass()]).run(module)


def test_the_pass_is_registered_by_name() -> None:
    assert parse_pass("insert-collectives") == InsertCollectivesPass()
