"""Use lists of the IR core: replacing a value's uses and detaching a removed op."""

from __future__ import annotations

import gc

from dtensor_compiler.ir.core import Operation, Value
from dtensor_compiler.ir.types import TensorType

T = TensorType("f32", (4,))


def test_replacing_a_value_moves_every_use_and_keeps_the_operand_order():
    a, b, c = Value(T), Value(T), Value(T)
    twice = Operation("add", [a, a], [T])
    mixed = Operation("subtract", [c, a], [T])
    a.replace_all_uses_with(b)
    assert twice.operands == (b, b) and mixed.operands == (c, b)
    assert a.uses == []
    assert sorted(b.uses, key=lambda u: (id(u[0]), u[1])) == sorted(
        [(twice, 0), (twice, 1), (mixed, 1)], key=lambda u: (id(u[0]), u[1]))
    assert c.uses == [(mixed, 0)]


def test_replacing_a_value_by_itself_changes_nothing():
    a = Value(T)
    op = Operation("add", [a, a], [T])
    a.replace_all_uses_with(a)
    assert op.operands == (a, a) and a.uses == [(op, 0), (op, 1)]


def test_a_dropped_op_leaves_no_cycle_for_the_collector():
    """Detached from its operands and results, a removed op is freed by reference counting
    at once (a pass removes thousands while the collector is paused)."""
    a = Value(T)
    op = Operation("negative", [a], [T])
    result = op.result
    op.drop_operands()
    assert a.uses == [] and op.operands == () and result is not None and result.owner is None
    enabled = gc.isenabled()
    gc.disable()
    try:
        gc.collect()
        before = sum(type(o) is Operation for o in gc.get_objects())
        del op, result
        after = sum(type(o) is Operation for o in gc.get_objects())
    finally:
        if enabled:
            gc.enable()
    assert after == before - 1


def test_narrow_early_leaves_no_op_it_gave_up_on_in_a_use_list():
    """A slice that cannot move above an add (its other operand is pending a sum) leaves
    the add's operands used by the add alone."""
    from dtensor_compiler.ir.parser import parse_module
    from dtensor_compiler.pass_manager import PassManager
    module = parse_module("""mesh<dp=2, tp=4>
func @f(%x: f32[16,8] @ {-, tp}, %b: f32[16,8] @ {-, tp} partial(dp:sum)) -> (f32[16,8] @ {dp, tp}) {
  %0 = negative %x : f32[16,8] @ {-, tp}
  %1 = add %0, %b : f32[16,8] @ {-, tp}
  %2 = local_slice %1 {mesh_dims = [dp], axis = 0} : f32[16,8] @ {dp, tp}
  return %2
}
""")
    PassManager.parse("narrow-early").run(module)
    func = module.main
    assert [u.name for u in func.ops[0].results[0].users] == ["add"]
    assert all(u in func.ops for v in func.values() for u in v.users)
