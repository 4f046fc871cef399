"""The verifier: valid IR passes; each kind of broken invariant is caught and shown in place."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from dtensor_compiler.errors import Location, VerificationError
from dtensor_compiler.ir.builder import Builder
from dtensor_compiler.ir.core import Function, Level, Module, Operation, Value
from dtensor_compiler.ir.opdef import InferContext
from dtensor_compiler.ir.parser import parse_module
from dtensor_compiler.ir.sharding import MeshShape, Sharding
from dtensor_compiler.ir.types import TensorType
from dtensor_compiler.ir.verifier import verify_module

MESH = MeshShape((("dp", 2), ("tp", 4)))

HEADER = ("func @f(%x: f32[8,16] @ {dp, -}, %w: f32[16,4] @ {-, tp}, "
          "%p: f32[8,16] @ {dp, -} partial(tp:sum)) -> (f32[8,4] @ {dp, tp}) {")
VALID = "mesh<dp=2, tp=4>\n" + HEADER + """
  %0 = matmul %x, %w : f32[8,4] @ {dp, tp}
  %1 = tanh %0 : f32[8,4] @ {dp, tp}
  %2 = all_reduce %p {mesh_dims = [tp], op = sum} : f32[8,16] @ {dp, -}
  %3 = reduce_scatter %p {mesh_dims = [tp], op = sum, axis = 1} : f32[8,16] @ {dp, tp}
  %4 = all_gather %3 {mesh_dims = [dp], axis = 0} : f32[8,16] @ {-, tp}
  %5 = all_to_all %4 {mesh_dims = [tp], split_axis = 0, concat_axis = 1} : f32[8,16] @ {tp, -}
  %6 = local_slice %5 {mesh_dims = [dp], axis = 0} : f32[8,16] @ {(tp, dp), -}
  %7 = relayout %6 : f32[8,16] @ {-, (dp, tp)}
  %8 = add %2, %7 : f32[8,16]
  %9 = multiply %8, %8 : f32[8,16]
  return %1
}
"""


def fault(module: Module, after: str | None = None) -> str:
    with pytest.raises(VerificationError) as info:
        verify_module(module, after=after)
    return str(info.value)


def test_valid_ir_passes() -> None:
    verify_module(parse_module(VALID))
    verify_module(parse_module(VALID.replace("mesh<dp=2, tp=4>", "mesh<dp=2, tp=4> local")
                               .replace("f32[8,16] @ {dp, tp}", "f32[8,4] @ {dp, tp}")
                               .replace("f32[8,16] @ {-, tp}", "f32[16,4] @ {-, tp}")
                               .replace("f32[8,16] @ {tp, -}", "f32[4,16] @ {tp, -}")
                               .replace("f32[8,16] @ {(tp, dp), -}", "f32[2,16] @ {(tp, dp), -}")
                               .replace("f32[8,16] @ {-, (dp, tp)}", "f32[2,16] @ {-, (dp, tp)}")
                               .replace("%7 = relayout %6 : f32[2,16] @ {-, (dp, tp)}",
                                        "%7 = negative %6 : f32[2,16] @ {(tp, dp), -}")
                               .replace("%8 = add %2, %7", "%8 = add %2, %2")))


def test_an_op_must_be_legal_at_the_module_level() -> None:
    module = parse_module("mesh<dp=2> local\nfunc @f(%x: f32[4] @ {dp}) -> () {\n"
                          "  %0 = relayout %x : f32[8] @ {-}\n  return\n}\n")
    text = fault(module)
    assert "relayout is not allowed in a local module" in text
    assert ">   %0 = relayout %x : f32[8] @ {-}" in text


# (a line of VALID, its broken replacement, the start of the message)
TEXT_FAULTS = [
    ("%0 = matmul %x, %w : f32[8,4] @ {dp, tp}", "%0 = matmul %x, %w : f32[8,5] @ {dp, tp}",
     "matmul gives f32[8,4] but its result type is f32[8,5] @ {dp, tp}"),
    ("%9 = multiply %8, %8 : f32[8,16]", "%9 = multiply %8, %8 : f64[8,16]",
     "multiply gives f32[8,16] but its result type is f64[8,16]"),
    ("%0 = matmul %x, %w : f32[8,4] @ {dp, tp}", "%0 = matmul %w, %x : f32[8,4] @ {dp, tp}",
     "matmul: matmul contracting dims differ: [16, 4] @ [8, 16]"),
    ("%7 = relayout %6 : f32[8,16] @ {-, (dp, tp)}", "%7 = relayout %6 : f32[16,8] @ {-, -}",
     "relayout gives f32[8,16] but its result type is f32[16,8]"),
    ("%9 = multiply %8, %8 : f32[8,16]", "%9 = multiply %8, %8 : f32[8,16] @ {zz, -}",
     "layout of %9: mesh dim 'zz' is not in mesh<dp=2, tp=4>"),
    ("%9 = multiply %8, %8 : f32[8,16]", "%9 = multiply %8, %8 : f32[8,16] @ {tp, tp}",
     "layout of %9: mesh dim 'tp' is used more than once"),
    ("%2 = all_reduce %p {mesh_dims = [tp], op = sum} : f32[8,16] @ {dp, -}",
     "%2 = all_reduce %p {mesh_dims = [tp], op = sum} : f32[8,16] @ {-, -}",
     "all_reduce turns {dp, -} partial(tp:sum) into {dp, -}, but its result layout is {-, -}"),
    ("%2 = all_reduce %p {mesh_dims = [tp], op = sum} : f32[8,16] @ {dp, -}",
     "%2 = all_reduce %p {mesh_dims = [tp], op = max} : f32[8,16] @ {dp, -}",
     "all_reduce: all_reduce over 'tp' needs a pending max on 'tp'"),
    ("%4 = all_gather %3 {mesh_dims = [dp], axis = 0} : f32[8,16] @ {-, tp}",
     "%4 = all_gather %3 {mesh_dims = [dp], axis = 0} : f32[8,16]",
     "all_gather needs a layout on its operand and on its result"),
    ("%4 = all_gather %3 {mesh_dims = [dp], axis = 0} : f32[8,16] @ {-, tp}",
     "%4 = all_gather %3 {mesh_dims = [dp], axis = 5} : f32[8,16] @ {-, tp}",
     "all_gather: list index out of range"),
    ("%4 = all_gather %3 {mesh_dims = [dp], axis = 0} : f32[8,16] @ {-, tp}",
     "%4 = all_gather %3 {mesh_dims = [ep], axis = 0} : f32[8,16] @ {-, tp}",
     "all_gather: mesh dim 'ep' is not in mesh<dp=2, tp=4>"),
    ("%5 = all_to_all %4 {mesh_dims = [tp], split_axis = 0, concat_axis = 1} : f32[8,16] @ {tp, -}",
     "%5 = all_to_all %4 {mesh_dims = [tp], split_axis = 0} : f32[8,16] @ {tp, -}",
     "all_to_all is missing attribute 'concat_axis'"),
    ("%8 = add %2, %7 : f32[8,16]", "%8 = add %2 : f32[8,16]", "add takes 2 operands, has 1"),
    ("%9 = multiply %8, %8 : f32[8,16]", "%9 = full {value = 300} : i8[8,16]",
     "full: full value 300 does not fit i8"),
    ("%9 = multiply %8, %8 : f32[8,16]", "%9 = full {value = nan} : i32[8,16]",
     "full: full value nan does not fit i32"),
]


@pytest.mark.parametrize(("old", "new", "message"), TEXT_FAULTS)
def test_faults_in_ops_are_caught_and_marked(old: str, new: str, message: str) -> None:
    assert old in VALID
    text = fault(parse_module(VALID.replace(old, new)), after="my-pass")
    assert text.startswith("IR verification failed after pass 'my-pass' in @f: " + message)
    marked = [line for line in text.split("\n") if line.startswith(">")]
    assert marked == [">   " + new]


def test_the_excerpt_shows_three_lines_around_the_fault() -> None:
    module = parse_module(VALID.replace("%5 = all_to_all %4 {mesh_dims = [tp]",
                                        "%5 = all_to_all %4 {mesh_dims = [dp]"))
    module.main.ops[5].loc = Location("model.py", 12)
    text = fault(module)
    assert text.split("\n") == [
        "IR verification failed in @f: all_to_all: all_to_all over ['dp'] needs dim 1 to end "
        "with them, layout is {-, tp} (at model.py:12)",
        "    %2 = all_reduce %p {mesh_dims = [tp], op = sum} : f32[8,16] @ {dp, -}",
        "    %3 = reduce_scatter %p {mesh_dims = [tp], op = sum, axis = 1} : f32[8,16] @ {dp, tp}",
        "    %4 = all_gather %3 {mesh_dims = [dp], axis = 0} : f32[8,16] @ {-, tp}",
        ">   %5 = all_to_all %4 {mesh_dims = [dp], split_axis = 0, concat_axis = 1} : "
        "f32[8,16] @ {tp, -}",
        "    %6 = local_slice %5 {mesh_dims = [dp], axis = 0} : f32[8,16] @ {(tp, dp), -}",
        "    %7 = relayout %6 : f32[8,16] @ {-, (dp, tp)}",
        "    %8 = add %2, %7 : f32[8,16]",
    ]


def test_argument_layouts_are_checked_at_the_header() -> None:
    text = fault(parse_module(VALID.replace("%w: f32[16,4] @ {-, tp}", "%w: f32[16,4] @ {dp, dp}")))
    assert "layout of %w: mesh dim 'dp' is used more than once" in text
    assert text.split("\n")[1] == "> " + HEADER.replace("{-, tp}", "{dp, dp}")


def test_padding_is_recorded_exactly_where_blocks_do_not_divide() -> None:
    def check(level: str, arg: str) -> str:
        return fault(parse_module(f"mesh<dp=2, tp=4>{level}\nfunc @f(%x: {arg}) -> () {{\n"
                                  "  return\n}\n"))

    assert "a global type records no local/global extents" in check("", "f32[1/6] @ {dp}")
    assert "pad(sum) on a type without padding" in check("", "f32[8] @ {dp} pad(sum)")
    assert "pad(max) on a type without padding" in check(" local", "f32[4] @ {dp} pad(max)")
    assert ("dim 0 of global extent 8 over 2 shards has no padding; write it as 4"
            in check(" local", "f32[4/8] @ {dp}"))
    assert ("dim 0 of global extent 7 over 8 shards has blocks of 1, not 2"
            in check(" local", "f32[2/7] @ {(dp, tp)}"))
    assert ("dim 0 of global extent 10 over 1 shards has no padding; write it as 10"
            in check(" local", "f32[3/10] @ {-}"))
    assert ("pad(max) on c64: complex numbers have no order"
            in check(" local", "c64[1/7] @ {(dp, tp)} pad(max)"))
    for ok in ("f32[6,16] @ {(dp, tp), -}", "f32[7] @ {dp} pad(sum)"):
        verify_module(parse_module(f"mesh<dp=2, tp=4>\nfunc @f(%x: {ok}) -> () {{\n"
                                   "  return\n}\n"))
    verify_module(parse_module("mesh<dp=2, tp=4> local\nfunc @f(%x: f32[1/7] @ {(dp, tp)} "
                               "pad(min)) -> () {\n  return\n}\n"))


def test_layout_rank_must_match_the_tensor_rank() -> None:
    module = parse_module(VALID)
    module.main.args[0].type = TensorType("f32", (8, 16), Sharding.of("dp"))
    assert "layout of %x: layout has rank 1 but the tensor has rank 2" in fault(module)
    module.level = Level.LOCAL
    assert "layout of %x: layout has rank 1 but the tensor has rank 2" in fault(module)


def test_localized_ir_needs_no_divisibility_but_known_mesh_dims() -> None:
    local = "mesh<dp=2, tp=4> local\nfunc @f(%x: f32[3,5] @ {dp, tp}) -> () {\n  return\n}\n"
    verify_module(parse_module(local))
    module = parse_module(local.replace("{dp, tp}", "{dp, ep}"))
    assert "layout of %x: mesh dim 'ep' is not in mesh<dp=2, tp=4>" in fault(module)
    module = parse_module(local.replace("{dp, tp}", "{(dp, tp), dp}"))
    assert "layout of %x: mesh dim 'dp' is used more than once" in fault(module)


def test_localized_collectives_change_local_shapes() -> None:
    text = ("mesh<dp=2, tp=4> local\nfunc @f(%x: f32[4,16] @ {dp, -}) -> () {\n"
            "  %0 = all_gather %x {mesh_dims = [dp], axis = 0} : f32[8,16] @ {-, -}\n"
            "  return\n}\n")
    verify_module(parse_module(text))
    message = fault(parse_module(text.replace("f32[8,16] @ {-, -}", "f32[4,16] @ {-, -}")))
    assert "all_gather gives f32[8,16] but its result type is f32[4,16] @ {-, -}" in message


def test_constants_in_localized_ir_hold_global_values() -> None:
    ctx = InferContext(MESH, Level.LOCAL)
    func = Function("f", [])
    Builder(func, ctx).create("constant", [], {"value": np.zeros((4, 8), np.float32)},
                              declared=TensorType("f32", (2, 2), Sharding.of("dp", "tp")))
    module = Module(MESH, [func], level=Level.LOCAL)
    verify_module(module)
    func.ops[0].attrs["value"] = np.zeros((2, 2), np.float32)
    assert "constant value has shape [2, 2], type says [2, 2]" in fault(module)


def test_use_before_definition_is_caught() -> None:
    module = parse_module(VALID)
    ops = module.main.ops
    ops[0], ops[1] = ops[1], ops[0]
    text = fault(module)
    assert "operand 0 (%1) is not defined before its use" in text
    assert ">   %0 = tanh %1 : f32[8,4] @ {dp, tp}" in text


def test_values_of_another_function_are_not_defined() -> None:
    module = parse_module(VALID)
    stranger = Value(TensorType("f32", (8, 16)), name_hint="y")
    module.main.ops[9].set_operand(1, stranger)
    assert "operand 1 (%<unknown>) is not defined before its use" in fault(module)


def test_a_value_is_defined_once() -> None:
    module = parse_module(VALID)
    module.main.ops.insert(2, module.main.ops[1])
    text = fault(module)
    assert "is defined twice" in text
    assert ">   %2 = tanh %0 : f32[8,4] @ {dp, tp}" in text


def test_returned_values_must_be_defined() -> None:
    module = parse_module(VALID)
    module.main.erase(module.main.ops[9])
    tanh = module.main.ops[1]
    module.main.ops.remove(tanh)
    tanh.drop_operands()
    text = fault(module, after="dce")
    assert "after pass 'dce' in @f: returned value 0 (%<unknown>) is not defined in @f" in text
    assert ">   return %<unknown>" in text


@pytest.mark.parametrize(("corrupt", "message"), [
    (lambda ops: ops[1].result.uses.append((ops[9], 1)),
     "use-list of %1 names operand 1 of this op, which is not %1"),
    (lambda ops: ops[1].result.uses.append((ops[9], 7)),
     "use-list of %1 names operand 7 of this op, which is not %1"),
    (lambda ops: ops[8].result.uses.append((ops[9], 0)),
     "use-list of %8 names operand 0 of this op twice"),
    (lambda ops: ops[8].result.uses.remove((ops[9], 1)),
     "operand 1 is missing from the use-list of %8"),
])
def test_use_lists_must_match_operands(corrupt: Callable[[list[Operation]], None],
                                       message: str) -> None:
    module = parse_module(VALID)
    corrupt(module.main.ops)
    text = fault(module)
    assert message in text
    assert ">   %9 = multiply %8, %8 : f32[8,16]" in text


def test_a_use_by_an_op_outside_the_function_is_a_leak() -> None:
    """An op a pass built and dropped without `drop_operands` stays a consumer of its
    operands, which planning would then count (how narrow-early's leak was found)."""
    module = parse_module(VALID)
    Operation("tanh", [module.main.ops[1].result], [TensorType("f32", (8, 4))])
    text = fault(module)
    assert ("use-list of %1 names tanh (operand 0), an op that is not in this function "
            "(a pass removed it without `drop_operands`)") in text
    assert ">   %1 = " in text


def test_unknown_ops_are_caught() -> None:
    module = parse_module(VALID)
    module.main.ops[8].name = "frobnicate"
    text = fault(module)
    assert "unknown op 'frobnicate'" in text
    assert ">   %8 = frobnicate %2, %7 : f32[8,16]" in text


def test_an_op_has_the_registered_result_count() -> None:
    module = parse_module(VALID)
    x, w, _ = module.main.args
    module.main.ops.insert(0, Operation("matmul", [x, w]))
    text = fault(module)
    assert "matmul has 1 result(s), not 0" in text
    assert ">   matmul %x, %w" in text


NESTED_KERNELS = """\
mesh<x=2> local entry @f
func @f(%a: f32[4,6] @ {x, -}) -> (f32[4,6] @ {x, -}) {
  %0 = kernel %a {body = g} : f32[4,6] @ {x, -}
  return %0
}

func @g(%a: f32[4,6] @ {x, -}) -> (f32[4,6] @ {x, -}) {
  %0 = kernel %a {body = h} : f32[4,6] @ {x, -}
  return %0
}

func @h(%a: f32[4,6] @ {x, -}) -> (f32[4,6] @ {x, -}) {
  %0 = exp %a : f32[4,6] @ {x, -}
  return %0
}
"""


def test_a_kernel_body_runs_no_function_itself() -> None:
    """The executor runs a body on its own: one that runs another (or itself, through a
    cycle) could not run."""
    assert "kernel runs @g, which runs another function itself (kernel)" in fault(
        parse_module(NESTED_KERNELS))
    verify_module(parse_module(NESTED_KERNELS.replace("kernel %a {body = h}", "exp %a")))


def test_checkpoint_ops_name_devices_of_the_mesh() -> None:
    text = """\
mesh<dp=2> local entry @save
func @save(%w: f32[4] @ {dp}) -> () {
  save_shard %w {device = 7, names = [w], prefix = "ck"}
  return
}
"""
    assert "save_shard: device 7 is not one of the mesh's 2" in fault(parse_module(text))
