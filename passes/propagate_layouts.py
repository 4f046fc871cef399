"""propagate-layouts: give every value a layout and make every change of layout explicit.

Expects: a global-shape module as the tracer makes it. Function arguments have the user's
layout or none; op results have none, except the results of ``relayout`` ops (pinned output
layouts and the user's ``dtc.relayout`` calls), whose type holds their target layout.

Guarantees:
- every value has a layout and an `origin` naming the annotations it was derived from
  (``%x``, ``out_layouts[0]``, or ``default: replicated``) and the op that carried it;
- every operand has exactly the layout its op's strategy needs; wherever a value's layout
  must change there is a ``relayout`` op right before the consumer, at the consumer's
  location, whose `why` says why in the user's terms; one relayout serves every later
  consumer that needs the same value in the same layout;
- returned values carry no pending reduction unless a pinned output layout asks for one;
- ``relayout`` ops whose operand already has the target layout are gone;
- every ``relayout_like`` is a ``relayout`` to the layout its second operand got, pending
  reductions applied;
- layout hints (``cotangent``) are gone, each replaced by its first operand, which phase 1
  gave the layout of its second unless something decided first;
- unannotated arguments that nothing constrains are replicated.

The op semantics come only from the op definitions: their factor rules, the pending
reductions they let through (`OpDef.carried`), and for a barrier the operand layouts it needs
(`Barrier.operands`; an effectful op is always a barrier). Phase 1
(`_desired_layouts`) propagates layouts (dims only) forward and backward to a fixpoint, resolving
conflicts by cost. Phase 2 (here) walks the ops in program order and picks each op's strategy
(`_strategy.StrategyChooser`) from the actual layouts of its operands, pending reductions
included, and the phase-1 layout wanted for its result; then it inserts the relayouts that
strategy needs. Every choice is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass

from dtensor_compiler.cost import CostModel
from dtensor_compiler.ir import opdef
from dtensor_compiler.ir.builder import make_op
from dtensor_compiler.ir.core import Function, LayoutOrigin, Module, Operation, Value
from dtensor_compiler.ir.opdef import InferContext
from dtensor_compiler.ir.ops.collectives import RELAYOUT_LIKE
from dtensor_compiler.ir.printer import format_op_ref
from dtensor_compiler.ir.reasons import Reason, Requested, ReturnedPending
from dtensor_compiler.ir.sharding import MeshShape, ReduceOp, Sharding
from dtensor_compiler.pass_manager import ModulePass, PassContext, register_pass
from dtensor_compiler.passes._desired_layouts import (
    DEFAULT_SOURCE,
    DesiredLayouts,
    Sources,
    desired_layouts,
    merge_sources,
)
from dtensor_compiler.passes._explain import Explainer, op_ref
from dtensor_compiler.passes._factor_sharding import FactorSpaces
from dtensor_compiler.passes._strategy import LayoutCosts, Placed, StrategyChooser


@register_pass
@dataclass(frozen=True)
class PropagateLayoutsPass(ModulePass):
    """Choose a layout for every value and insert the relayouts the chosen strategies need."""

    name = "propagate-layouts"

    def apply(self, module: Module, ctx: PassContext) -> None:
        for func in module.functions:
            _Propagation(func, module.mesh, ctx.cost_model).run()


class _Propagation:
    """Phase 2 over one function, and the bookkeeping around it."""

    def __init__(self, func: Function, mesh: MeshShape, cost_model: CostModel) -> None:
        self.func = func
        self.hints = _take_hints(func)
        self.infer = InferContext(mesh)
        self.spaces = FactorSpaces(mesh)
        self.chooser = StrategyChooser(LayoutCosts(mesh, cost_model), self.spaces)
        self.explain = Explainer(func)
        self.actual: dict[Value, Sharding] = {}
        self.sources: dict[Value, Sources] = {}
        self.relayouts: dict[tuple[Value, Sharding], Value] = {}
        self.made: dict[Value, frozenset[Sharding]] = {}
        """The layouts each value was relayouted to so far."""
        self.ops: list[Operation] = []
        self.reduced: frozenset[Value] = frozenset()
        """Values whose consumers may not keep their pending reductions (see `run`)."""
        self.known: dict[Value, Sharding] = {}
        """Every value's actual layout, or else its desired one (phase 1's dims) if it has
        none yet: what the chooser knows of the layouts of an op's consumers' operands."""
        self.desired: dict[Value, Sharding] = {}

    def run(self) -> None:
        """Phase 2 walks the ops once. When it reduces a value that an op placed earlier took
        with its pending reductions (to be reduced again later: ``s`` and ``s / 16`` both
        reduced), it marks that value `reduced`, steps back to the value's first consumer and
        walks on from there, that consumer now given the reduced value, which exists anyway."""
        pinned = self._pinned()
        self.chooser.count_consumers(self.func.ops)  # (phase 1 places nothing: it serves both)
        desired = desired_layouts(self.func, pinned, self.spaces, self.chooser, self.hints)
        self.desired = desired.layouts
        self.known = dict(desired.layouts)
        self._phase2(pinned, desired)
        self._relayouts_of_likes()
        self.func.ops = [op for op in self.ops if not self._drop_if_noop(op)]

    def _phase2(self, pinned: dict[Value, tuple[Sharding, Sources]],
                desired: DesiredLayouts) -> None:
        for arg in self.func.args:
            if arg in pinned:
                self._set(arg, pinned[arg][0], pinned[arg][1], arg.origin)
            elif arg in desired.layouts:
                self._set(arg, desired.layouts[arg], desired.sources[arg],
                          LayoutOrigin(", ".join(desired.sources[arg]),
                                       op_ref(desired.via[arg])))
            else:
                self._set(arg, Sharding.replicated(arg.type.rank), (DEFAULT_SOURCE,))
        original = _Snapshot(self.func)
        ops, position = original.ops, original.position
        marks: list[tuple[int, int, int]] = []
        """Per op placed, the sizes of `self.ops`, `actual` and `relayouts` just before."""
        i = 0
        while True:
            while i < len(ops):
                marks.append((len(self.ops), len(self.actual), len(self.relayouts)))
                self._place(ops[i], pinned, desired)
                i += 1
                back = self._step_back(marks[-1][0], position, i)
                if back is not None:
                    i = self._undo(back, original, marks)
            start = len(self.ops)
            self._resolve_returned_partials(pinned)
            back = self._step_back(start, position, i)
            if back is None:
                return
            self.func.set_results(original.results)
            i = self._undo(back, original, marks)

    def _step_back(self, start: int, position: dict[int, int], placed: int) -> int | None:
        """After placing an op (whose new ops are `self.ops[start:]`, the first `placed`
        original ops now placed), the position of the first op to place again, or None.
        When the op reduced a value by a relayout while an op placed earlier took it
        pending, or took pending a value some relayout reduced, that value and the ones it
        inherited its reductions from (`_inherited_from`) become `reduced`, and phase 2
        steps back to their first consumer."""
        new: set[Value] = set()
        for op in self.ops[start:]:
            if op.name in ("relayout", RELAYOUT_LIKE.name):
                value = op.operands[0]
                partial = self.actual[value].partial
                if not partial:
                    continue
                resolved = frozenset(partial) - frozenset(self.actual[op.results[0]].partial)
                if resolved and value.owner is not None and any(
                        u.name != "relayout" and position.get(id(u), placed) < placed
                        and self.spaces.of(u) is not None for u in value.users):
                    new.update([value, *self._inherited_from(value, resolved)])
            elif self.spaces.of(op) is not None:
                for value in op.operands:
                    partial = self.actual[value].partial
                    if not partial or value.owner is None:
                        continue
                    have = frozenset(partial)
                    for made in self.made.get(value, ()):
                        resolved = have - frozenset(made.partial)
                        if resolved:
                            new.update([value, *self._inherited_from(value, resolved)])
        new -= self.reduced
        if not new:
            return None
        self.reduced |= new
        return min(position[id(u)] for v in new for u in v.users
                   if position.get(id(u), placed) < placed)

    def _undo(self, back: int, original: _Snapshot, marks: list[tuple[int, int, int]]
              ) -> int:
        """Undo the placement of the original ops from position `back` on, with the
        relayouts made since; returns `back`."""
        n_ops, n_values, n_relayouts = marks[back]
        for op in self.ops[n_ops:]:
            if id(op) not in original.position:
                op.drop_operands()
        del self.ops[n_ops:]
        for k in range(back, len(marks)):
            original.restore_op(k)
            op = original.ops[k]
            space = self.spaces.of(op)
            if space is not None:
                self.chooser.unplaced(op, space)
        del marks[back:]
        while len(self.actual) > n_values:
            value, _ = self.actual.popitem()
            if value in self.desired:
                self.known[value] = self.desired[value]
            else:
                del self.known[value]
            del self.sources[value]
        while len(self.relayouts) > n_relayouts:
            (value, layout), _ = self.relayouts.popitem()
            self.made[value] = self.made[value] - {layout}
        return back

    def _inherited_from(self, value: Value, resolved: frozenset[tuple[str, ReduceOp]]
                        ) -> list[Value]:
        """The values `value`'s pending reductions `resolved` came down from, through ops
        with one such pending operand no bigger than `value`, up to the highest one that
        some other consumer takes too. Reducing that one instead moves no more bytes, and
        its other consumers then need no reductions of their own (the layernorm backward
        reduces the gradient it is given once, not its statistics again)."""
        chain: list[Value] = []
        op = value.owner
        while op is not None and op.name != "relayout" and self.spaces.of(op) is not None:
            pending = [v for v in op.operands if resolved <= frozenset(self.actual[v].partial)]
            if len(pending) != 1 or pending[0].type.size > value.type.size:
                break
            chain.append(pending[0])
            op = pending[0].owner
        shared = [i for i, v in enumerate(chain) if len(v.users) > 1]
        return chain[:shared[-1] + 1] if shared else []

    # -- seeds ------------------------------------------------------------------------------------
    def _pinned(self) -> dict[Value, tuple[Sharding, Sources]]:
        """Layouts that never change: annotated arguments and the results of barriers (their
        declared layouts, else replicated), with the annotation each comes from."""
        pinned: dict[Value, tuple[Sharding, Sources]] = {}
        for arg in self.func.args:
            if arg.type.sharding is not None:
                source = (arg.origin.source if arg.origin is not None
                          else f"%{self.explain.value(arg).arg}")
                pinned[arg] = (arg.type.sharding, (source,))
        returned = {id(v): i for i, v in reversed(list(enumerate(self.func.results)))}
        for op in self.func.ops:
            if self.spaces.of(op) is not None or op.name == RELAYOUT_LIKE.name:
                continue  # (a relayout_like's result takes its second operand's layout)
            for value in op.results:
                if value.origin is not None:
                    source = value.origin.source
                elif id(value) in returned:
                    source = f"out_layouts[{returned[id(value)]}]"
                else:
                    source = format_op_ref(op_ref(op))
                layout = value.type.sharding or Sharding.replicated(value.type.rank)
                pinned[value] = (layout, (source,))
        return pinned

    # -- phase 2 ----------------------------------------------------------------------------------
    def _place(self, op: Operation, pinned: dict[Value, tuple[Sharding, Sources]],
               desired: DesiredLayouts) -> None:
        """Choose `op`'s strategy, insert the relayouts it needs, and set its result layout."""
        space = self.spaces.of(op)
        if op.name == RELAYOUT_LIKE.name:
            self._place_like(op)
            return
        if space is None:
            self._place_barrier(op, pinned)
            return
        result = op.result
        assert result is not None, "ops with a factor rule have one result"
        operands = op.operands
        wanted = desired.layouts.get(result)
        reduced = tuple(v in self.reduced for v in operands) if self.reduced else ()
        placed = Placed(self.chooser.sharers(op, space),
                        tuple(self.made.get(v, frozenset()) for v in operands))
        strategy = self.chooser.choose(space, op, [self.actual[v] for v in operands], wanted,
                                       reduced, placed, self.known)
        self.chooser.placed(op, space)
        sources = merge_sources([self.sources[operands[t]] if t < len(operands) else
                                 desired.sources[result] for t in strategy.seeds])
        origin = LayoutOrigin(", ".join(sources), op_ref(op))
        for i, (value, need) in enumerate(zip(operands, strategy.operands)):
            have = self.actual[value]
            if have == need:
                continue
            key = (value, need)
            if key not in self.relayouts:
                matched: list[Value | None] = [
                    v for v, n in zip(operands, strategy.operands)
                    if v is not value and self.actual[v] == n]
                if not matched and wanted == strategy.result.without_partial():
                    matched = [None]
                why = self.explain.operand_relayout(op, i, space, strategy.factors, have, need,
                                                    matched, value in self.reduced)
                self.relayouts[key] = self._relayout(value, need, op, why, sources, origin)
            op.set_operand(i, self.relayouts[key])
        self.ops.append(op)
        self._set(result, strategy.result, sources, origin)

    def _place_barrier(self, op: Operation, pinned: dict[Value, tuple[Sharding, Sources]]
                       ) -> None:
        """Relayout the operands of an op without a factor rule to the layouts its definition
        needs, and pin its results."""
        barrier = opdef.lookup(op.name).sharding
        assert isinstance(barrier, opdef.Barrier)
        for i, (value, need) in enumerate(zip(op.operands, barrier.operands(op))):
            have = self.actual[value]
            if need is None or have == need:
                continue
            key = (value, need)
            if key not in self.relayouts:
                why = self.explain.barrier_relayout(op, i, have, need)
                self.relayouts[key] = self._relayout(value, need, op, why, self.sources[value],
                                                     value.origin)
            op.set_operand(i, self.relayouts[key])
        for result in op.results:
            layout, sources = pinned[result]
            self._set(result, layout, sources, result.origin)
            if op.why is None and op.name == "relayout":
                op.why = Requested(sources[0], layout)
        self.ops.append(op)

    def _place_like(self, op: Operation) -> None:
        """A ``relayout_like``'s result takes the layout its second operand was given, its
        pending reductions applied (`_relayouts_of_likes` makes it a ``relayout``)."""
        like = op.operands[1]
        result = op.result
        assert result is not None
        self._set(result, self.actual[like].without_partial(), self.sources[like],
                  like.origin)
        self.ops.append(op)

    def _relayouts_of_likes(self) -> None:
        """Replace each ``relayout_like`` by a ``relayout`` to the layout its result got."""
        for i, op in enumerate(self.ops):
            if op.name != RELAYOUT_LIKE.name:
                continue
            old = op.result
            assert old is not None
            new = make_op("relayout", [op.operands[0]], {}, self.infer,
                          sharding=self.actual[old], loc=op.loc, why=op.why)
            assert new.result is not None
            self._set(new.result, self.actual[old], self.sources[old], old.origin)
            self.func.replace_value(old, new.result)
            op.drop_operands()
            self.ops[i] = new

    def _relayout(self, value: Value, layout: Sharding, consumer: Operation | None, why: Reason,
                  sources: Sources, origin: LayoutOrigin | None) -> Value:
        """Append a relayout of `value` to `layout` at the consumer's location."""
        loc = consumer.loc if consumer is not None else None
        op = make_op("relayout", [value], {}, self.infer, sharding=layout, loc=loc, why=why)
        self.ops.append(op)
        self.made[value] = self.made.get(value, frozenset()) | {layout}
        assert op.result is not None
        self._set(op.result, layout, sources, origin)
        return op.result

    def _resolve_returned_partials(self, pinned: dict[Value, tuple[Sharding, Sources]]) -> None:
        """Reduce the pending reductions of returned values no annotation asked for."""
        for i, value in enumerate(self.func.results):
            have = self.actual[value]
            if not have.partial or (value in pinned and value.owner is not None):
                continue
            need = have.without_partial()
            key = (value, need)
            if key not in self.relayouts:
                why = ReturnedPending(i, self.explain.value(value), have.partial)
                self.relayouts[key] = self._relayout(value, need, value.owner, why,
                                                     self.sources[value], value.origin)
            self.func.set_result(i, self.relayouts[key])

    def _drop_if_noop(self, op: Operation) -> bool:
        """Remove a relayout whose operand already has its target layout."""
        if op.name != "relayout" or op.result is None:
            return False
        (source,) = op.operands
        if self.actual[source] != self.actual[op.result]:
            return False
        self.func.replace_value(op.result, source)
        op.drop_operands()
        return True

    def _set(self, value: Value, layout: Sharding, sources: Sources,
             origin: LayoutOrigin | None = None) -> None:
        self.actual[value] = layout
        self.known[value] = layout
        self.sources[value] = sources
        value.type = value.type.with_sharding(layout)
        value.origin = origin or LayoutOrigin(", ".join(sources))


def _take_hints(func: Function) -> dict[Value, list[Value]]:
    """Remove the layout hints (``cotangent``) from `func`, each replaced by its first
    operand; returns, per value, the values hinted to take its layout."""
    hints: dict[Value, list[Value]] = {}
    kept = []
    for op in func.ops:
        if not isinstance(opdef.lookup(op.name).sharding, opdef.LayoutHint):
            kept.append(op)
            continue
        target, value = op.operands
        assert op.result is not None
        func.replace_value(op.result, target)
        op.drop_operands()
        hints.setdefault(value, []).append(target)
    func.ops = kept
    return hints


class _Snapshot:
    """What phase 2 changes in the original ops, kept to undo it: their operands and
    reasons, and the returned values."""

    def __init__(self, func: Function) -> None:
        self.ops = list(func.ops)
        self.position = {id(op): i for i, op in enumerate(self.ops)}
        """Each op's index in `ops`, by id."""
        self.operands = [op.operands for op in self.ops]
        self.whys = [op.why for op in self.ops]
        self.results = list(func.results)

    def restore_op(self, k: int) -> None:
        """Give the `k`-th op its original operands and reason back."""
        op = self.ops[k]
        for i, value in enumerate(self.operands[k]):
            if op.operands[i] is not value:
                op.set_operand(i, value)
        op.why = self.whys[k]
