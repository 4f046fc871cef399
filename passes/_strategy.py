"""Choosing how one op runs: the factor sharding (and the kept pending reductions) of least cost.

Given the layouts an op's operands have (None where not known yet) and the layout wanted for
its result (or None), `StrategyChooser.choose` builds candidate factor shardings -- the
projection of every known layout, each projection merged with all the others, and the fully
replicated one -- and, when operands carry pending reductions that the op's definition lets
through (`OpDef.carried`), variants that keep them pending. It returns the candidate of least cost

    sum over operands of relayout(actual -> required)
    + resolve(produced -> wanted)
    + compute(produced local bytes)

where `relayout` is `plan_relayout`'s time under the cost model. An operand's relayout is free
when an earlier consumer of the value already made that layout, and otherwise shared among its
twin consumers not placed yet (ops of one factor space taking the value in one slot, like the
q, k and v projections of one activation: they choose alike, so one relayout serves them all).

`resolve` depends on whether some consumer of the result could take its pending reductions as
they are (a linear op a sum, ``maximum`` a max, a relayout to a layout keeping them). If so,
they are charged only for the bytes their resolution will move (`volume`: the time under the
cost model without latency or launch cost), since they may yet be absorbed (a later reduction,
a sum of partial values) or turned into a reduce_scatter by the target, plus the relayout of
the produced dims to the wanted ones; if not, resolve is the full relayout of the produced
layout to the wanted one, as it will be paid right here. Keeping a reduction pending through
an op that makes it bigger (a broadcast of a ``[rows, 1]`` statistic) is always charged in
full: wherever it is resolved later, it is resolved at the bigger size. The compute term
makes redundant replicated work cost more than sharded work.

Ties go first to the candidate whose result is not sharded along a dim that a reduction
(``reduce_sum`` and the like, one operand) reduces away, as that gives the reduction's result
pending reductions (of ``labels * log_probs`` laid out ``{-, x}`` and ``{x, -}`` and summed
over the last dim, the product is best ``{x, -}``); it breaks ties only, since charging it
as a cost made other plans worse (a gradient's operand all-gathered to spare a small
all_reduce), but costs within `_TIE` of the least count as tied for it (a latency-bound
all_to_all of a 1-byte mask against one of its 4-byte log-probabilities: the later
reduction decides, and the sparse softmax loss needs no reduction at all); among those, the
exact cost comes next; then to the candidate that does not keep pending a value other
consumers read too while no consumer of its result takes the reductions (reducing that
value now costs the same, once for all of them, where keeping it would have it reduced
again for the others); then to the candidate with more sharded mesh dims, then to the
earliest; candidates that keep pending reductions come first.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from math import prod
from typing import NamedTuple

from dtensor_compiler.cost import CostModel, Link
from dtensor_compiler.errors import PlanningError
from dtensor_compiler.ir import opdef
from dtensor_compiler.ir.core import Operation, Value
from dtensor_compiler.ir.sharding import MeshShape, ReduceOp, Sharding
from dtensor_compiler.ir.types import TensorType
from dtensor_compiler.passes._factor_sharding import FactorSharding, FactorSpace, FactorSpaces
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


class Placed(NamedTuple):
    """What the consumers placed before an op decided about its operands (a tuple: one is
    made and hashed per op placed)."""

    waiting: tuple[int, ...]
    """Per operand: the consumers not placed yet, this op included (a relayout made now may
    serve them all)."""
    made: tuple[frozenset[Sharding], ...]
    """Per operand: the layouts earlier consumers already had it relayouted to (free now)."""


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


Later = tuple[tuple[frozenset[int], TensorType], ...]
"""Per reduction consuming a value: the dims it reduces away and its result's type
(`StrategyChooser._reductions_later`)."""
Pendings = frozenset[tuple[str, ReduceOp]]
"""A set of pending reductions: (mesh dim, kind)."""
_Question = tuple[FactorSpace, tuple[Sharding | None, ...], Sharding | None, tuple[bool, ...]]
"""What `choose` is asked, less the placement: the op's factor space, its operands' layouts,
the wanted result layout and the operands that must be reduced."""
_Priced = tuple[_Question, Pendings, bool]
"""A question, the pending reductions its result's consumers carry, and whether a pending
operand it may keep has other consumers: what the candidates' prices depend on."""


class StrategyChooser:
    """`choose` for the ops of one function, with memory: ops of one `FactorSpace` share name,
    attributes and types, so the identical layers of a deep model ask the same questions.
    `spaces` gives every op its factor space."""

    def __init__(self, costs: LayoutCosts, spaces: FactorSpaces) -> None:
        self.costs = costs
        self.spaces = spaces
        self._options: dict[_Question, tuple[tuple[_Option, ...], Pendings]] = {}
        """Per question, its candidates and the pending reductions whose price depends on
        what the result's consumers do (`_carried_by_users`)."""
        self._memo: dict[_Priced, tuple[_Candidate, ...]] = {}
        self._ranked: dict[tuple[_Priced, Placed, Later], tuple[Strategy, ...]] = {}
        self._waiting: Counter[tuple[Value, FactorSpace, int]] = Counter()
        self._uses: dict[tuple[Operation, int], _Use] = {}
        self._later: dict[Value, Later] = {}
        self._penalties: dict[tuple[Later, Sharding], float] = {}

    def choose(self, space: FactorSpace, op: Operation, operands: Sequence[Sharding | None],
               result: Sharding | None, reduced: tuple[bool, ...] = (),
               placed: Placed | None = None,
               layouts: Mapping[Value, Sharding] | None = None) -> Strategy:
        """The least-cost strategy for `op` (of `space`) given its operands' layouts (None:
        unknown) and the layout wanted for its result (None: free), pending reductions of the
        result included. `reduced` marks the operands whose pending reductions may not be kept
        (their reduced value exists anyway); `placed` says what earlier consumers of the
        operands already decided (without it, every consumer is still to come); `layouts`
        holds the layouts known so far of other values (the result's consumers' operands)."""
        return self.alternatives(space, op, operands, result, reduced, placed, layouts)[0]

    def alternatives(self, space: FactorSpace, op: Operation,
                     operands: Sequence[Sharding | None], result: Sharding | None,
                     reduced: tuple[bool, ...] = (), placed: Placed | None = None,
                     layouts: Mapping[Value, Sharding] | None = None
                     ) -> tuple[Strategy, ...]:
        """Every strategy `choose` weighs, best first."""
        if placed is None:
            placed = Placed(self.sharers(op, space), tuple(frozenset() for _ in op.operands))
        assert op.result is not None
        question: _Question = (space, tuple(operands), result, reduced)
        entry = self._options.get(question)
        if entry is None:
            entry = self._options[question] = _options_of(space, op, operands, result,
                                                          reduced, self.costs)
        options, asks = entry
        carried = self._carried_by_users(op.result, layouts or {}, asks) if asks else asks
        shared = bool(asks) and any(s is not None and s.partial and len(v.uses) > 1
                                    for v, s in zip(op.operands, operands))
        key = (question, carried, shared)
        later = self._reductions_later(op.result)
        ranked = self._ranked.get((key, placed, later))
        if ranked is None:
            if key not in self._memo:
                self._memo[key] = tuple(o.priced(carried, shared) for o in options)
            candidates = self._memo[key]
            penalties = tuple(self._penalty(later, c.strategy.result) for c in candidates) \
                if later else ()
            ranked = self._ranked[key, placed, later] = _ranked(candidates, placed, penalties)
        return ranked

    def _reductions_later(self, value: Value) -> Later:
        """Per consumer of `value` that reduces some of its dims away and takes no other
        operand (a ``reduce_sum``, not a contraction, whose other operands' layouts decide
        whether its reduction is the plan): those dims and the type of its result. Asked
        only before the consumers are placed (or after they are undone), so the answer for
        the original program is kept."""
        later = self._later.get(value)
        if later is not None:
            return later
        out = []
        for user, slot in value.uses:
            space = self.spaces.of(user)
            if space is None or user.result is None or len(user.operands) != 1:
                continue
            dims = frozenset(d for d, factors in enumerate(space.tensors[slot])
                             if factors and all(space.is_reduced(f) for f in factors))
            if dims:
                out.append((dims, user.result.type))
        later = self._later[value] = tuple(out)
        return later

    def _penalty(self, later: Later, result: Sharding) -> float:
        """What the consumers in `later` will pay for reducing dims that `result` shards."""
        key = (later, result)
        cost = self._penalties.get(key)
        if cost is None:
            cost = 0.0
            for dims, rtype in later:
                mesh_dims = {m for d in dims for m in result.dims[d]}
                if mesh_dims:
                    pending = Sharding(((),) * rtype.rank, tuple(
                        (m, ReduceOp.SUM) for m in sorted(mesh_dims)))
                    cost += self.costs.relayout(pending, pending.without_partial(), rtype)
            self._penalties[key] = cost
        return cost

    def count_consumers(self, ops: Iterable[Operation]) -> None:
        """Count, for `sharers`, the consumers among `ops` (a whole function, none placed
        yet) of each value by factor space and operand slot. Call it again to start over
        from the original program."""
        self._waiting.clear()
        for op in ops:
            space = self.spaces.of(op)
            if space is not None:
                for slot, value in enumerate(op.operands):
                    self._waiting[value, space, slot] += 1

    def placed(self, op: Operation, space: FactorSpace) -> None:
        """Note that `op` (with its original operands) has chosen its strategy."""
        for slot, value in enumerate(op.operands):
            self._waiting[value, space, slot] -= 1

    def unplaced(self, op: Operation, space: FactorSpace) -> None:
        """Undo `placed` (`op` has its original operands again)."""
        for slot, value in enumerate(op.operands):
            self._waiting[value, space, slot] += 1

    def sharers(self, op: Operation, space: FactorSpace) -> tuple[int, ...]:
        """Per operand, its consumers that are twins of `op` (one factor space, the operand in
        the same slot) and not placed yet, `op` included: twins given one layout choose
        alike, so one relayout serves them all (the q, k and v projections of one
        activation)."""
        return tuple(self._waiting[value, space, slot]
                     for slot, value in enumerate(op.operands))

    def _carried_by_users(self, value: Value, layouts: Mapping[Value, Sharding],
                          asked: Pendings, depth: int = 4) -> Pendings:
        """Of the pending reductions (mesh dim, kind) `asked` about, those of `value` that all
        its consumers take somewhere cheaper than here: a relayout to a layout keeping them;
        a sum with another value pending the same reduction (one reduction for both); a
        reduction or other op that takes them to a smaller result. An op that takes them on
        at the same size (a linear op a sum, ``reshape`` any kind) passes the question on to
        its own consumers, `depth` ops deep. A reduction one consumer cannot take is paid in
        full at this size anyway, and then serves every consumer: carrying it for the others
        saves nothing (the layernorm backward's gradient, which one path sums to a parameter
        gradient and another adds to the residual stream's)."""
        carried = set(asked)
        later: dict[Operation, Pendings] = {}
        for user, slot in value.uses:
            if not carried:
                break
            use = self._uses.get((user, slot))
            if use is None:
                use = self._uses[user, slot] = _Use.of(user, slot)
            if use.keeps is not None:  # a relayout
                carried.intersection_update(use.keeps)
                continue
            others = [layouts.get(v) for j, v in enumerate(user.operands) if j != slot]
            used: set[str] | None = None
            for pending in list(carried):
                mesh_dim, kind = pending
                if kind not in use.kinds:
                    carried.discard(pending)
                    continue
                merges = kind in use.commutes and bool(others) and all(
                    o is None or pending in o.partial for o in others)
                takes = merges or (kind in use.commutes and not others)
                if not takes and kind == ReduceOp.SUM and use.linear:
                    if used is None:
                        used = set().union(*(o.used_mesh_dims() for o in others
                                             if o is not None))
                    takes = mesh_dim not in used
                if not takes:
                    carried.discard(pending)
                elif not (merges or use.smaller):
                    if depth == 0:
                        carried.discard(pending)
                        continue
                    if user not in later:
                        result = user.result
                        assert result is not None
                        later[user] = self._carried_by_users(result, layouts,
                                                             frozenset(carried), depth - 1)
                    if pending not in later[user]:
                        carried.discard(pending)
        return frozenset(carried)


@dataclass(frozen=True, slots=True)
class _Use:
    """What `_carried_by_users` needs to know of one use of a value (an op and an operand
    slot) that does not change while layouts are chosen."""

    keeps: Pendings | None
    """For a relayout: the pending reductions its target keeps; None for any other op."""
    kinds: frozenset[ReduceOp] = frozenset()
    """The pending reductions of the operand the op may take on (none: it cannot)."""
    commutes: frozenset[ReduceOp] = frozenset()
    linear: bool = False
    smaller: bool = False
    """The result is smaller than the operand."""

    @staticmethod
    def of(user: Operation, slot: int) -> _Use:
        if user.name == "relayout":
            target = user.type.sharding
            return _Use(frozenset(target.partial) if target is not None else frozenset())
        definition = opdef.lookup(user.name)
        result = user.result
        value = user.operands[slot]
        if not isinstance(definition.sharding, opdef.Factors) or result is None \
                or result.type.dtype != value.type.dtype:
            return _Use(None)
        traits = definition.traits
        linear = traits.is_linear_in(slot)
        kinds = traits.commutes_with | {ReduceOp.SUM} if linear else traits.commutes_with
        return _Use(None, kinds, traits.commutes_with, linear,
                    result.type.size < value.type.size)


@dataclass(frozen=True)
class _Candidate:
    """A strategy before its operands' relayouts are weighed against what earlier consumers
    did (so that the identical layers of a model share one list)."""

    strategy: Strategy
    """With `cost` the op's own terms: compute and resolving the result."""
    moves: tuple[float, ...]
    """Per operand: the time of its relayout to the required layout (0 if unknown)."""
    sharded: int
    """The sharded mesh dims of the factor sharding (ties go to more)."""
    held: bool = False
    """It keeps pending a value that has other consumers, and no consumer of the result
    takes the reductions: ties go to reducing the value now (the same bytes, once, for
    every consumer), not here and again for the others."""


@dataclass(frozen=True)
class _Option:
    """A candidate before it is priced: the cost of resolving its result's pending
    reductions depends on whether the result's consumers may take them all (`asks`)."""

    candidate: _Candidate
    """Priced for resolving the result's pending reductions in full."""
    asks: Pendings
    """The result's pending reductions, when consumers carrying them all would make it
    cheaper (`absorbed`); empty when the full price holds regardless."""
    absorbed: float
    """The op's own cost when they are carried: their resolution charged by volume only."""

    def priced(self, carried: Pendings, shared: bool) -> _Candidate:
        """The candidate, given the pending reductions the result's consumers carry and
        whether a pending operand it would keep has other consumers."""
        if self.asks and self.asks <= carried:
            s = self.candidate.strategy
            return replace(self.candidate, strategy=replace(s, cost=self.absorbed))
        if self.asks and shared:
            return replace(self.candidate, held=True)
        return self.candidate


def _options_of(space: FactorSpace, op: Operation, operands: Sequence[Sharding | None],
                result: Sharding | None, reduced: tuple[bool, ...], costs: LayoutCosts
                ) -> tuple[tuple[_Option, ...], Pendings]:
    """The candidates for `op`, and every pending reduction some candidate's price asks
    about."""
    out: list[_Option] = []
    for factors, seeds in _candidates(space, [*operands, result]):
        for keep in _keep_variants(operands, reduced):
            option = _evaluate(space, op, operands, result, factors, seeds, keep, costs)
            if option is not None:
                out.append(option)
    assert out, "the replicated candidate always applies"
    return tuple(out), frozenset().union(*(o.asks for o in out))


_TIE = 1e-3
"""Costs within this fraction of the least are a tie for the reductions later (`_ranked`):
below the cost model's resolution (a latency-bound collective of 12 bytes or of 48)."""


def _ranked(candidates: Sequence[_Candidate], placed: Placed,
            penalties: Sequence[float] = ()) -> tuple[Strategy, ...]:
    """The candidates' strategies with their full cost, best first: an operand's relayout is
    free when an earlier consumer made that layout, else shared among the twins waiting.
    Among equal costs, the smaller `penalties` entry (what the consumers' reductions will
    cost) goes first."""
    ranked: list[tuple[float, float, bool, int, int, Strategy]] = []
    for n, candidate in enumerate(candidates):
        s = candidate.strategy
        cost = s.cost
        for need, move, waiting, made in zip(s.operands, candidate.moves, placed.waiting,
                                             placed.made):
            if move and need not in made:
                cost += move / waiting
        if cost != s.cost:
            s = Strategy(s.factors, s.operands, s.result, s.seeds, cost)
        ranked.append((cost, penalties[n] if penalties else 0.0, candidate.held,
                       -candidate.sharded, n, s))
    ranked.sort(key=lambda r: r[:5])
    if penalties and len(ranked) > 1:  # costs the model cannot tell apart are a tie
        near = ranked[0][0] * (1 + _TIE) + 1e-15
        tied = [r for r in ranked if r[0] <= near]
        tied.sort(key=lambda r: (r[1], r[0], *r[2:5]))  # (then the exact cost)
        ranked[:len(tied)] = tied
    return tuple(r[5] for r in ranked)


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
              result: Sharding | None, factors: FactorSharding,
              seeds: tuple[int, ...], keep: tuple[int, ...], costs: LayoutCosts
              ) -> _Option | None:
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
    cost = costs.compute(produced, rtype)
    moves = tuple(0.0 if actual is None else costs.relayout(actual, need, value.type)
                  for value, actual, need in zip(op.operands, operands, required))
    target = produced.without_partial() if result is None else result.without_partial()
    full = cost + costs.relayout(produced, target, rtype)  # no consumer can take them
    candidate = _Candidate(Strategy(factors, required, produced, seeds, full), moves,
                           sum(len(m) for m in factors))
    grows = any(op.operands[i].type.size < rtype.size for i in keep)
    if not produced.partial or grows:
        return _Option(candidate, frozenset(), full)
    # the pending reductions may be absorbed downstream: then charge their volume only
    absorbed = (cost + costs.volume(produced, rtype)
                + costs.relayout(produced.without_partial(), target, rtype))
    return _Option(candidate, frozenset(produced.partial), absorbed)
