"""insert-collectives: carry out every `relayout` op with the collectives that perform it.

Expects: a global-shape module (not localized) in which every value has a sharding, as
`propagate-layouts` leaves it, and every change of layout is an explicit `relayout` op whose
result type holds the target layout, whose `why` says why it is needed and whose `loc` is the
user's line.

Guarantees: no `relayout` op remains. Each one is replaced, in place, by the steps that
`plan_relayout` picks under the context's cost model, emitted in order as `all_reduce`,
`reduce_scatter`, `all_to_all`, `all_gather`, `local_slice` and `make_partial` ops built with
checked types;
every emitted op carries the relayout's `loc` and a `Planned` reason holding the relayout's
(a step that reduces a pending partial also names the op that left it pending, unless the
relayout's reason says so already), and the last one's result takes over
the relayout result's uses and `origin`. A relayout whose source and target layouts are equal
is removed and its uses read the source. No other op changes, and nothing changes when some
relayout has no plan.
"""

from __future__ import annotations

from dataclasses import dataclass

from dtensor_compiler.cost import CostModel
from dtensor_compiler.errors import PassError, PlanningError
from dtensor_compiler.ir.builder import make_op
from dtensor_compiler.ir.core import Function, Module, Operation, Value
from dtensor_compiler.ir.opdef import InferContext
from dtensor_compiler.ir.reasons import OpRef, PendingSource, Planned, explains_pending
from dtensor_compiler.pass_manager import ModulePass, PassContext, register_pass
from dtensor_compiler.planner import Step, plan_relayout


@register_pass
@dataclass(frozen=True)
class InsertCollectivesPass(ModulePass):
    """Replace every `relayout` op by its cheapest sequence of collectives."""

    name = "insert-collectives"

    def apply(self, module: Module, ctx: PassContext) -> None:
        infer = InferContext(module.mesh)
        for func in module.functions:
            plans = {op: _plan(func, op, infer, ctx.cost_model)
                     for op in func.ops if op.name == "relayout"}
            # One new op list: inserting before each relayout in place would search the list
            # once per relayout.
            ops: list[Operation] = []
            for op in func.ops:
                if op in plans:
                    ops += _expand(func, op, plans[op], infer)
                else:
                    ops.append(op)
            func.ops = ops


def _plan(func: Function, op: Operation, infer: InferContext, cost_model: CostModel
          ) -> list[Step]:
    """The collectives that carry out the relayout `op`."""
    assert op.result is not None
    (source,) = op.operands
    src, dst = source.type.sharding, op.result.type.sharding
    where = f"{op.loc}: " if op.loc is not None else ""
    if src is None or dst is None:
        raise PassError(f"{where}relayout of a value without a layout in @{func.name}; "
                        "run propagate-layouts first")
    try:
        return plan_relayout(src, dst, infer.mesh, source.type.shape, source.type.itemsize,
                             cost_model)
    except PlanningError as e:
        raise PlanningError(f"{where}{e}") from None


def _expand(func: Function, op: Operation, steps: list[Step], infer: InferContext
            ) -> list[Operation]:
    """The ops of `steps` that replace `op`; reroutes its uses to them and detaches `op`."""
    assert op.result is not None
    (source,) = op.operands
    target = op.type.sharding
    assert target is not None
    explained = op.why is not None and explains_pending(op.why)
    new_ops = []
    value = source
    for step in steps:
        reduces = any(p not in step.dst.partial for p in step.src.partial)
        pending = None if explained or not reduces else _pending_source(source, step.mesh_dims)
        new_ops.append(make_op(step.kind, [value], step.attr_dict(), infer, sharding=step.dst,
                               loc=op.loc, why=Planned(op.why, target, pending)))
        result = new_ops[-1].result
        assert result is not None
        value = result
    if steps:
        value.origin = op.result.origin
    func.replace_value(op.result, value)
    op.drop_operands()
    return new_ops


def _pending_source(value: Value, mesh_dims: tuple[str, ...]) -> PendingSource | None:
    """The op that left the pending reduction over `mesh_dims` (``matmul at f.py:12 left a
    pending sum over tp``): walks back through the ops that carried it to the one that made
    it."""
    while (carrier := _carrying_operand(value.owner, mesh_dims)) is not None:
        value = carrier
    owner, sharding = value.owner, value.type.sharding
    if owner is None or sharding is None:
        return None
    ops = sorted({sharding.partial_map[m] for m in mesh_dims if m in sharding.partial_map})
    return PendingSource(OpRef(owner.name, owner.loc), tuple(ops), mesh_dims)


def _carrying_operand(op: Operation | None, mesh_dims: tuple[str, ...]) -> Value | None:
    """The operand of `op` that already had the pending reduction over `mesh_dims`, if any."""
    if op is None:
        return None
    return next((v for v in op.operands if v.type.sharding is not None
                 and all(m in v.type.sharding.partial_map for m in mesh_dims)), None)
