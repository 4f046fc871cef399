"""Choosing how one op runs: the factor sharding (and the kept pending reductions) of least cost.

Given the layouts an op's operands have (None where not known yet) and the layout wanted for
its result (or None), `StrategyChooser.choose` builds candidate factor shardings -- the
projection of every known layout, each projection merged with all the others, and the fully
replicated one -- and, when operands carry pending reductions that the op's definition lets
through (`OpDef.carried`), variants that keep them pending. It returns the candidate of least cost

    sum over operands of relayout(actual -> required)
    + relayout(produced dims -> wanted dims)
    + volume(produced pending reductions) + compute(produced local bytes)

where `relayout` is `plan_relayout`'s time under the cost model, and an operand's relayout is
shared among the ops that consume the value (one relayout serves every consumer that needs the
same layout, like q, k and v projections of one activation). A pending reduction is charged
at its producer only for the bytes its resolution will move (`volume`, the time under the cost
model without latency or launch cost); the full time of resolving it is paid where a consumer
cannot take it, since it may first be absorbed (a later reduction, a sum of partial values) or
turned into a reduce_scatter by the target. The compute term makes redundant replicated work
cost more than sharded work. Ties go to the candidate with more sharded mesh dims, then to the
earliest; candidates that keep pending reductions come first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from math import prod

from dtensor_compiler.cost import CostModel, Link
from dtensor_compiler.errors import PlanningError
from dtensor_compiler.ir import opdef
from dtensor_compiler.ir.core import Operation, Value
from dtensor_compiler.ir.sharding import MeshShape, ReduceOp, Sharding
from dtensor_compiler.ir.types import TensorType
from dtensor_compiler.passes._factor_sharding import FactorSharding, FactorSpace
from dtensor_compiler.planner import relayout_cost


@dataclass(frozen=True)
class Strategy:
    """One way to run an op, with the layouts it needs and makes."""

    factors: FactorSharding
    operands: tuple[Sharding, ...]
    """The layout each operand must have."""
    result: Sharding
    """The layout the op produces, pending reductions included."""
    seeds: tuple[int, ...]
    """The tensors (operands, then the result) whose layouts the factor sharding came from."""
    cost: float


class LayoutCosts:
    """The terms of the objective, on one mesh under one cost model."""

    def __init__(self, mesh: MeshShape, cost_model: CostModel) -> None:
        self.mesh = mesh
        self.cost_model = cost_model
        self.volume_model = replace(
            cost_model, launch=0.0, default=Link(0.0, cost_model.default.bandwidth),
            links=tuple((m, Link(0.0, link.bandwidth)) for m, link in cost_model.links))

    def relayout(self, src: Sharding, dst: Sharding, type: TensorType,
                 model: CostModel | None = None) -> float:
        """Seconds to turn `src` into `dst`; infinite when no plan exists."""
        if src == dst:
            return 0.0
        try:
            return relayout_cost(src, dst, self.mesh, type.shape, type.itemsize,
                                 model or self.cost_model)
        except PlanningError:
            return float("inf")

    def volume(self, produced: Sharding, type: TensorType) -> float:
        """The bandwidth time of resolving `produced`'s pending reductions where it is."""
        if not produced.partial:
            return 0.0
        return self.relayout(produced, produced.without_partial(), type, self.volume_model)

    def compute(self, produced: Sharding, type: TensorType) -> float:
        """The time to write the op's local result once."""
        local = produced.local_shape(type.shape, self.mesh)
        return self.cost_model.compute_time(prod(local) * type.itemsize)


class StrategyChooser:
    """`choose` for the ops of one function, with memory: ops of one `FactorSpace` share name,
    attributes and types, so the identical layers of a deep model ask the same questions.
    `consumers` counts the ops that use each value."""

    def __init__(self, costs: LayoutCosts, consumers: dict[Value, int]) -> None:
        self.costs = costs
        self.consumers = consumers
        self._memo: dict[tuple[FactorSpace, tuple[Sharding | None, ...], Sharding | None,
                               tuple[int, ...], tuple[bool, ...]], Strategy] = {}

    def choose(self, space: FactorSpace, op: Operation, operands: Sequence[Sharding | None],
               result: Sharding | None, reduced: tuple[bool, ...] = ()) -> Strategy:
        """The cheapest strategy for `op` given what is known of its operands' and result's
        layouts (see the module docstring). Unknown operands are not charged, nor an unknown
        result. `reduced` marks the operands whose pending reductions may not be kept (their
        reduced value exists anyway)."""
        consumers = tuple(self.consumers.get(v, 1) for v in op.operands)
        key = (space, tuple(operands), result, consumers, reduced)
        if key not in self._memo:
            self._memo[key] = _choose(space, op, operands, result, consumers, reduced,
                                      self.costs)
        return self._memo[key]


def _choose(space: FactorSpace, op: Operation, operands: Sequence[Sharding | None],
            result: Sharding | None, consumers: tuple[int, ...], reduced: tuple[bool, ...],
            costs: LayoutCosts) -> Strategy:
    best: Strategy | None = None
    best_key: tuple[float, int] | None = None
    for factors, seeds in _candidates(space, [*operands, result]):
        for keep in _keep_variants(operands, reduced):
            strategy = _evaluate(space, op, operands, result, consumers, factors, seeds, keep,
                                 costs)
            if strategy is None:
                continue
            key = (strategy.cost, -sum(len(m) for m in factors))
            if best_key is None or key < best_key:
                best, best_key = strategy, key
    assert best is not None, "the replicated candidate always applies"
    return best


def _candidates(space: FactorSpace, known: Sequence[Sharding | None]
                ) -> list[tuple[FactorSharding, tuple[int, ...]]]:
    seeds = [(space.project(t, s.dims), t) for t, s in enumerate(known) if s is not None]
    out: dict[FactorSharding, tuple[int, ...]] = {}
    for fs, t in seeds:
        out.setdefault(fs, (t,))
    for base, t in seeds:
        merged, used = base, [t]
        for other, u in seeds:
            grown = space.merge(merged, other)
            if grown != merged:
                merged, used = grown, used + [u]
        out.setdefault(merged, tuple(used))
    out.setdefault(space.empty, ())
    return list(out.items())


def _keep_variants(operands: Sequence[Sharding | None], reduced: tuple[bool, ...] = ()
                   ) -> list[tuple[int, ...]]:
    """Which partial operands stay pending: all, each alone, none (in this order); never one
    marked `reduced`."""
    partial = tuple(i for i, s in enumerate(operands) if s is not None and s.partial
                    and not (reduced and reduced[i]))
    variants = [partial] + [(i,) for i in partial] + [()]
    return list(dict.fromkeys(variants))


def _evaluate(space: FactorSpace, op: Operation, operands: Sequence[Sharding | None],
              result: Sharding | None, consumers: tuple[int, ...], factors: FactorSharding,
              seeds: tuple[int, ...], keep: tuple[int, ...], costs: LayoutCosts
              ) -> Strategy | None:
    kept: list[dict[str, ReduceOp]] = []
    for i, operand in enumerate(operands):
        if i in keep:
            assert operand is not None, "only a partial operand is kept pending"
            kept.append(operand.partial_map)
        else:
            kept.append({})
    assert op.result is not None
    rtype = op.result.type
    passed = opdef.lookup(op.name).carried(kept, [v.type for v in op.operands],
                                           rtype) if keep else {}
    if passed is None:
        return None
    sharded = {m for mesh_dims in factors for m in mesh_dims}
    if any(not sharded.isdisjoint(p) for p in kept):
        return None
    reduced = space.reduced(factors)
    if passed and reduced and set(passed.values()) != set(reduced.values()):
        return None  # reductions of different kinds over different mesh dims do not commute
    required = tuple(Sharding(space.unproject(factors, i), tuple(kept[i].items()))
                     for i in range(len(operands)))
    produced = Sharding(space.unproject(factors, space.result_index),
                        tuple({**passed, **reduced}.items()))
    cost = costs.volume(produced, rtype) + costs.compute(produced, rtype)
    for value, actual, need, shared_by in zip(op.operands, operands, required, consumers):
        if actual is not None:
            cost += costs.relayout(actual, need, value.type) / shared_by
    if result is not None:
        cost += costs.relayout(produced.without_partial(), result.without_partial(), rtype)
    return Strategy(factors, required, produced, seeds, cost)
