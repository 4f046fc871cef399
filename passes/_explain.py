"""Reasons for layout decisions, as typed records (`ir.reasons`) in the user's terms.

Op results are referred to by the op that makes them and the user's line (printed ``%N``
names change whenever ops are inserted, so they cannot go into a reason that outlives the
pass); function arguments by their printed names. The printer renders the records.
"""

from __future__ import annotations

from functools import cached_property

from dtensor_compiler.ir.core import Function, Operation, Value
from dtensor_compiler.ir.factors import FactorKind
from dtensor_compiler.ir.printer import Namer
from dtensor_compiler.ir.reasons import (
    Cause,
    Destination,
    DimGivesUp,
    DimSharded,
    NeedsLayout,
    NeedsWholeDim,
    OperandRelayout,
    OpRef,
    PendingNotTaken,
    ReducedAnyway,
    ValueRef,
    WantedResultLayout,
)
from dtensor_compiler.ir.sharding import Sharding
from dtensor_compiler.passes._factor_sharding import FactorSharding, FactorSpace


def op_ref(op: Operation) -> OpRef:
    """The op as the user wrote it: the numpy function it is part of, else its own name."""
    return OpRef(op.loc.call if op.loc is not None and op.loc.call else op.name, op.loc)


class Explainer:
    """Refers to the ops and values of one function and says why an operand must be relaid
    out."""

    def __init__(self, func: Function) -> None:
        self._func = func

    @cached_property
    def _namer(self) -> Namer:
        """Printed names; only arguments' are used, so it may be built late (and rarely is)."""
        return Namer(self._func)

    def value(self, value: Value) -> ValueRef:
        if value.owner is None:
            return ValueRef(arg=self._namer(value)[1:])
        return ValueRef(producer=op_ref(value.owner))

    def barrier_relayout(self, op: Operation, index: int, src: Sharding, dst: Sharding
                         ) -> OperandRelayout:
        """Why operand `index` of an op without a factor rule goes from `src` to `dst`."""
        causes: list[Cause] = []
        lost = tuple(p for p in src.partial if p not in dst.partial)
        if lost:
            causes.append(PendingNotTaken(op.name, lost))
        if src.dims != dst.dims:
            causes.append(NeedsLayout(op.name, dst))
        return OperandRelayout(op_ref(op), self.value(op.operands[index]), dst, tuple(causes))

    def operand_relayout(self, op: Operation, index: int, space: FactorSpace,
                         factors: FactorSharding, src: Sharding, dst: Sharding,
                         matched: list[Value | None], reduced_anyway: bool = False
                         ) -> OperandRelayout:
        """Why operand `index` of `op` goes from `src` to `dst` under the strategy `factors`.
        `matched` holds the tensors whose layouts the strategy keeps (None: the layout wanted
        for the result); they are mentioned unless the causes already say where a mesh dim
        went. `reduced_anyway`: the operand's pending reductions are resolved for another
        consumer too, so the op takes the reduced value even where it could carry them."""
        causes: list[Cause] = []
        lost = tuple(p for p in src.partial if p not in dst.partial)
        if lost:
            causes.append(ReducedAnyway(op.name, lost) if reduced_anyway
                          else PendingNotTaken(op.name, lost))
        moved = located = False
        for i, (have, need) in enumerate(zip(src.dims, dst.dims)):
            if have == need:
                continue
            dim_factors = space.tensors[index][i]
            if not dim_factors or any(space.rule.kind(f) is FactorKind.NEEDS_REPLICATION
                                      for f in dim_factors):
                causes.append(NeedsWholeDim(op.name, i))
                continue
            moved = True
            if need:
                contracted = any(space.is_reduced(f) for f in dim_factors)
                causes.append(DimSharded(i, need, contracted))
            for m in have:
                if m not in need:
                    to = self._taken_by(op, index, space, factors, m)
                    causes.append(DimGivesUp(i, m, to))
                    located = located or to is not None
        mentioned: tuple[ValueRef | WantedResultLayout, ...] = ()
        if moved and matched and not located:
            mentioned = tuple(WantedResultLayout() if v is None else self.value(v)
                              for v in matched)
        return OperandRelayout(op_ref(op), self.value(op.operands[index]), dst, tuple(causes),
                               mentioned)

    def _taken_by(self, op: Operation, index: int, space: FactorSpace, factors: FactorSharding,
                  mesh_dim: str) -> Destination | None:
        """Where the strategy uses `mesh_dim` instead, if anywhere."""
        owner = next((f for f, mesh_dims in enumerate(factors) if mesh_dim in mesh_dims), None)
        if owner is None:
            return None
        order = [index] + [t for t in range(len(space.tensors)) if t != index]
        for t in order:
            for j, dim_factors in enumerate(space.tensors[t]):
                if owner in dim_factors:
                    if t == index:
                        return Destination(j)
                    if t == space.result_index:
                        return Destination(j, of_result=True)
                    return Destination(j, value=self.value(op.operands[t]))
        return None
