"""simplify: every rewrite on exact IR text, under the verifier."""

from __future__ import annotations

import textwrap

from dtensor_compiler.errors import Location
from dtensor_compiler.ir.core import LayoutOrigin
from dtensor_compiler.ir.parser import parse_module
from dtensor_compiler.ir.printer import print_module
from dtensor_compiler.ir.reasons import OpRef
from dtensor_compiler.pass_manager import PassManager, parse_pass
from dtensor_compiler.passes.simplify import SimplifyPass


def run(text: str, pipeline: str = "simplify") -> str:
    module = parse_module(textwrap.dedent(text))
    PassManager.parse(pipeline).run(module)
    return print_module(module, locations=True)


def same(text: str) -> str:
    return textwrap.dedent(text)


# -- CSE -------------------------------------------------------------------------------------------


def test_cse_reuses_an_equal_earlier_op() -> None:
    assert run("""\
        mesh<tp=4>
        func @f(%x: f32[4,4]) -> (f32[4,4]) {
          %0 = tanh %x : f32[4,4] loc("m.py":1)
          %1 = tanh %x : f32[4,4] loc("m.py":2)
          %2 = add %0, %1 : f32[4,4] loc("m.py":3)
          return %2
        }
        """) == same("""\
        mesh<tp=4>
        func @f(%x: f32[4,4]) -> (f32[4,4]) {
          %0 = tanh %x : f32[4,4] loc("m.py":1)
          %1 = add %0, %0 : f32[4,4] loc("m.py":3)
          return %1
        }
        """)


def test_cse_tells_attributes_operands_and_types_apart() -> None:
    text = """\
        mesh<tp=4>
        func @f(%x: f32[4,4], %y: f32[4,4]) -> (f32[4,1], f32[4,1], f32[1,4], f32[4,4] @ {tp, -}, f32[4,4] @ {-, tp}, f32[4,4]) {
          %0 = reduce_sum %x {axes = [1], keepdims = true} : f32[4,1]
          %1 = reduce_sum %y {axes = [1], keepdims = true} : f32[4,1]
          %2 = reduce_sum %x {axes = [0], keepdims = true} : f32[1,4]
          %3 = relayout %x : f32[4,4] @ {tp, -}
          %4 = relayout %x : f32[4,4] @ {-, tp}
          %5 = subtract %x, %y : f32[4,4]
          return %0, %1, %2, %3, %4, %5
        }
        """  # noqa: E501
    assert run(text) == same(text)


def test_cse_compares_arrays_by_bytes_and_floats_by_bits() -> None:
    assert run("""\
        mesh<tp=4>
        func @f() -> (f32[2], f32[2], f32[2], f32[2], f32[2]) {
          %0 = constant {value = dense<[1.0, 2.0]>} : f32[2]
          %1 = constant {value = dense<[1.0, 2.0]>} : f32[2]
          %2 = constant {value = dense<[1.0, 3.0]>} : f32[2]
          %3 = full {value = 0.0} : f32[2]
          %4 = full {value = -0.0} : f32[2]
          return %0, %1, %2, %3, %4
        }
        """) == same("""\
        mesh<tp=4>
        func @f() -> (f32[2], f32[2], f32[2], f32[2], f32[2]) {
          %0 = constant {value = dense<[1.0, 2.0]>} : f32[2]
          %1 = constant {value = dense<[1.0, 3.0]>} : f32[2]
          %2 = full {value = 0.0} : f32[2]
          %3 = full {value = -0.0} : f32[2]
          return %0, %0, %1, %2, %3
        }
        """)


def test_cse_keeps_every_pinned_relayout() -> None:
    text = """\
        mesh<tp=4>
        func @f(%x: f32[8] @ {tp}) -> (f32[8] @ {-}, f32[8] @ {-}) {
          %0 = relayout %x : f32[8] @ {-}  // why: out_layouts[0] of f
          %1 = relayout %x : f32[8] @ {-}  // why: out_layouts[1] of f
          return %0, %1
        }
        """
    assert run(text) == same(text)


# -- DCE -------------------------------------------------------------------------------------------


def test_dce_removes_unused_chains_and_keeps_returned_values() -> None:
    assert run("""\
        mesh<tp=4>
        func @f(%x: f32[4]) -> (f32[4]) {
          %0 = exp %x : f32[4]
          %1 = log %0 : f32[4]
          %2 = negative %x : f32[4]
          return %2
        }
        """) == same("""\
        mesh<tp=4>
        func @f(%x: f32[4]) -> (f32[4]) {
          %0 = negative %x : f32[4]
          return %0
        }
        """)


# -- constant folding ------------------------------------------------------------------------------


def test_folding_makes_full_for_splats_and_constant_otherwise() -> None:
    assert run("""\
        mesh<tp=4>
        func @f(%x: f32[2]) -> (f32[2], f32[2]) {
          %0 = full {value = 3.0} : f32[2]
          %1 = constant {value = dense<[1.0, 2.0]>} : f32[2]
          %2 = multiply %1, %0 : f32[2] loc("m.py":4)
          %3 = add %0, %0 : f32[2] loc("m.py":5)
          %4 = add %x, %3 : f32[2]
          return %2, %4
        }
        """) == same("""\
        mesh<tp=4>
        func @f(%x: f32[2]) -> (f32[2], f32[2]) {
          %0 = constant {value = dense<[3.0, 6.0]>} : f32[2] loc("m.py":4)
          %1 = full {value = 6.0} : f32[2] loc("m.py":5)
          %2 = add %x, %1 : f32[2]
          return %0, %2
        }
        """)


def test_folding_chains_through_shape_ops_and_reductions() -> None:
    assert run("""\
        mesh<tp=4>
        func @f() -> (i64[3], f32[]) {
          %0 = constant {value = dense<[[1, 2, 3], [4, 5, 6]]>} : i64[2,3]
          %1 = transpose %0 {perm = [1, 0]} : i64[3,2]
          %2 = reduce_sum %1 {axes = [1], keepdims = false} : i64[3]
          %3 = full {value = 0.5} : f32[1000000]
          %4 = reduce_max %3 {axes = [0], keepdims = false} : f32[]
          return %2, %4
        }
        """) == same("""\
        mesh<tp=4>
        func @f() -> (i64[3], f32[]) {
          %0 = constant {value = dense<[5, 7, 9]>} : i64[3]
          %1 = full {value = 0.5} : f32[]
          return %0, %1
        }
        """)


def test_a_folded_value_equal_to_an_earlier_one_is_shared() -> None:
    assert run("""\
        mesh<tp=4>
        func @f(%x: f32[2]) -> (f32[2], f32[2]) {
          %0 = full {value = 2.0} : f32[2]
          %1 = full {value = 1.0} : f32[2]
          %2 = add %1, %1 : f32[2]
          %3 = multiply %x, %0 : f32[2]
          %4 = multiply %x, %2 : f32[2]
          return %3, %4
        }
        """) == same("""\
        mesh<tp=4>
        func @f(%x: f32[2]) -> (f32[2], f32[2]) {
          %0 = full {value = 2.0} : f32[2]
          %1 = multiply %x, %0 : f32[2]
          return %1, %1
        }
        """)


def test_folding_respects_the_size_limit() -> None:
    text = """\
        mesh<tp=4>
        func @f() -> (f32[8]) {
          %0 = full {value = 1.0} : f32[8]
          %1 = exp %0 : f32[8]
          return %1
        }
        """
    assert run(text, "simplify{fold-limit=4}") == same(text)
    assert run(text, "simplify{fold-limit=8}") == same("""\
        mesh<tp=4>
        func @f() -> (f32[8]) {
          %0 = full {value = 2.7182819843292236} : f32[8]
          return %0
        }
        """)


def test_folded_values_keep_their_layout_and_origin() -> None:
    module = parse_module(textwrap.dedent("""\
        mesh<tp=4>
        func @f() -> (f32[8] @ {tp}) {
          %0 = full {value = 1.0} : f32[8] @ {tp}
          %1 = negative %0 : f32[8] @ {tp}
          return %1
        }
        """))
    module.main.ops[1].result.origin = LayoutOrigin("%x", OpRef("negative", Location("m.py", 2)))
    PassManager([SimplifyPass()]).run(module)
    assert print_module(module) == same("""\
        mesh<tp=4>
        func @f() -> (f32[8] @ {tp}) {
          %0 = full {value = -1.0} : f32[8] @ {tp}
          return %0
        }
        """)
    assert module.main.results[0].origin == LayoutOrigin("%x", OpRef("negative", Location("m.py", 2)))


def test_relayouts_and_failing_ops_are_not_folded() -> None:
    text = """\
        mesh<tp=4>
        func @f() -> (f32[8] @ {tp}, f32[2]) {
          %0 = full {value = 1.0} : f32[8] @ {-}
          %1 = relayout %0 : f32[8] @ {tp}
          %2 = full {value = 7} : i64[2]
          %3 = constant {value = dense<[1.0, 2.0]>} : f32[2]
          %4 = take %3, %2 {axis = 0} : f32[2]
          return %1, %4
        }
        """
    assert run(text) == same(text)


def test_localized_modules_are_not_folded() -> None:
    text = """\
        mesh<tp=4> local
        func @f() -> (f32[2] @ {tp}) {
          %0 = full {value = 1.0} : f32[2] @ {tp}
          %1 = exp %0 : f32[2] @ {tp}
          return %1
        }
        """
    assert run(text) == same(text)


# -- identities ------------------------------------------------------------------------------------


def test_identity_ops_are_removed() -> None:
    assert run("""\
        mesh<tp=4>
        func @f(%x: f32[4,4] @ {tp, -}) -> (f32[4,4] @ {tp, -}) {
          %0 = reshape %x : f32[4,4] @ {tp, -}
          %1 = transpose %0 {perm = [0, 1]} : f32[4,4] @ {tp, -}
          %2 = broadcast_to %1 : f32[4,4] @ {tp, -}
          %3 = astype %2 : f32[4,4] @ {tp, -}
          %4 = relayout %3 : f32[4,4] @ {tp, -}
          %5 = tanh %4 : f32[4,4] @ {tp, -}
          return %5
        }
        """) == same("""\
        mesh<tp=4>
        func @f(%x: f32[4,4] @ {tp, -}) -> (f32[4,4] @ {tp, -}) {
          %0 = tanh %x : f32[4,4] @ {tp, -}
          return %0
        }
        """)


def test_ops_that_change_something_are_not_identities() -> None:
    text = """\
        mesh<tp=4>
        func @f(%x: f32[4,4], %y: f32[4,4] @ {tp, -}) -> (f32[4,4], f64[4,4], f32[4,4] @ {-, -}, f32[4,4] @ {tp, -}, f32[4,4] @ {-, tp}) {
          %0 = transpose %x {perm = [1, 0]} : f32[4,4]
          %1 = astype %x : f64[4,4]
          %2 = relayout %y : f32[4,4] @ {-, -}
          %3 = relayout %x : f32[4,4] @ {tp, -}
          %4 = reshape %y : f32[4,4] @ {-, tp}
          return %0, %1, %2, %3, %4
        }
        """  # noqa: E501
    assert run(text) == same(text)


def test_simplify_is_a_registered_pass_with_a_fold_limit_option() -> None:
    assert parse_pass("simplify{fold-limit=16}") == SimplifyPass(fold_limit=16)
    assert SimplifyPass().text() == "simplify"
    assert SimplifyPass().fold_limit == 1024
