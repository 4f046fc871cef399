"""Relayout planning: the cheapest sequence of collectives turning one sharding into another.

`plan_relayout` is a pure function of (source sharding, target sharding, mesh, global shape,
item size, cost model). It runs Dijkstra's algorithm over layouts: a state is a `Sharding` of
the value, an edge is one collective whose effect on the layout is exactly
`opdefs.apply_collective`, weighted by the cost model's time for it. Only layouts whose shards
divide the global shape are visited. Pending partial reductions that the target keeps are
carried through untouched; every other pending partial is reduced on the way; a pending
reduction the target has and the source lacks (or has with another op) is created locally
(`make_partial`). So every valid layout reaches every other.

Edges leaving a layout, in the order that breaks ties between equally cheap plans:

    all_reduce      a non-empty set of pending partial mesh dims that share a reduce op
    reduce_scatter  such a set, in any order, appended to the end of one tensor dim
    all_to_all      the last mesh dim of one tensor dim, moved to the end of another
    all_gather      a non-empty suffix of one tensor dim's mesh dims
    local_slice     one unused mesh dim appended to one tensor dim (a copy, no communication)
    make_partial    one unused mesh dim made a pending reduction the target has (local)

Among plans of equal time the one with fewer steps wins, then the one found first. Plans are
memoized, since layout propagation asks for the same relayout costs many times.
"""

from __future__ import annotations

import functools
import heapq
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import combinations, permutations
from math import prod
from typing import NoReturn

from dtensor_compiler.cost import DEFAULT_COST_MODEL, CostModel
from dtensor_compiler.errors import PlanningError
from dtensor_compiler.ir import geometry
from dtensor_compiler.ir.core import Attr
from dtensor_compiler.ir.sharding import MeshShape, Sharding

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Step:
    """One collective of a plan: what it is, the layouts it goes between, what it costs."""

    kind: str
    mesh_dims: tuple[str, ...]
    attrs: tuple[tuple[str, Attr], ...]
    """The IR op's attributes other than `mesh_dims`, in the registry's order."""
    src: Sharding
    dst: Sharding
    nbytes: int
    """Per-device bytes of the result buffer."""
    seconds: float
    """The cost model's estimate of the step's time."""

    def attr_dict(self) -> dict[str, Attr]:
        """Every attribute of the IR op, `mesh_dims` included."""
        return {"mesh_dims": self.mesh_dims, **dict(self.attrs)}


_Edge = tuple[str, tuple[str, ...], tuple[tuple[str, Attr], ...], Sharding]


def plan_relayout(src: Sharding, dst: Sharding, mesh: MeshShape, shape: Shape,
                  itemsize: int = 4, cost_model: CostModel = DEFAULT_COST_MODEL) -> list[Step]:
    """The cheapest steps turning a value of global `shape` laid out as `src` into `dst`.

    Empty when `src == dst`. Raises `PlanningError` when either layout does not fit the mesh or
    divide the shape (between valid layouts a plan always exists).
    """
    return list(_plan(src, dst, mesh, tuple(shape), itemsize, cost_model))


def relayout_cost(src: Sharding, dst: Sharding, mesh: MeshShape, shape: Shape,
                  itemsize: int = 4, cost_model: CostModel = DEFAULT_COST_MODEL) -> float:
    """Estimated seconds of the plan `plan_relayout` returns (0.0 when `src == dst`)."""
    return sum(s.seconds for s in _plan(src, dst, mesh, tuple(shape), itemsize, cost_model))


def _fail(src: Sharding, dst: Sharding, mesh: MeshShape, shape: Shape, reason: str) -> NoReturn:
    raise PlanningError(f"no relayout plan from {src.text()} to {dst.text()} for shape "
                        f"{list(shape)} on {mesh.text()}: {reason}")


def _check_endpoints(src: Sharding, dst: Sharding, mesh: MeshShape, shape: Shape) -> None:
    for role, sharding in (("source", src), ("target", dst)):
        problems = sharding.problems(mesh, shape)
        if problems:
            _fail(src, dst, mesh, shape, f"{role} layout: " + "; ".join(problems))


def _local_size(dims: tuple[tuple[str, ...], ...], shape: Shape, mesh: MeshShape) -> int | None:
    """Elements per device, or None when some tensor dim does not fit its shards."""
    if not geometry.fits(shape, dims, mesh):
        return None
    return prod(geometry.local_shape(shape, dims, mesh))


def _edges(state: Sharding, keep: frozenset[str], mesh_names: tuple[str, ...],
           wanted: tuple[tuple[str, str], ...]) -> Iterator[_Edge]:
    """Every single collective applicable to `state`, in tie-breaking order."""
    dims = state.dims
    rank = len(dims)
    pending = [(m, op) for m, op in state.partial if m not in keep]
    for op in sorted({op for _, op in pending}):
        group = sorted((m for m, o in pending if o == op), key=mesh_names.index)
        for k in range(1, len(group) + 1):
            for subset in combinations(group, k):
                rest = tuple(p for p in state.partial if p[0] not in subset)
                yield "all_reduce", subset, (("op", op),), Sharding(dims, rest)
                for order in permutations(subset):
                    for axis in range(rank):
                        grown = dims[:axis] + (dims[axis] + order,) + dims[axis + 1:]
                        yield ("reduce_scatter", order, (("op", op), ("axis", axis)),
                               Sharding(grown, rest))
    for concat_axis, d in enumerate(dims):
        if not d:
            continue
        for split_axis in range(rank):
            if split_axis == concat_axis:
                continue
            moved = list(dims)
            moved[concat_axis] = d[:-1]
            moved[split_axis] = dims[split_axis] + d[-1:]
            yield ("all_to_all", d[-1:], (("split_axis", split_axis), ("concat_axis", concat_axis)),
                   Sharding(tuple(moved), state.partial))
    for axis, d in enumerate(dims):
        for k in range(1, len(d) + 1):
            gathered = dims[:axis] + (d[:-k],) + dims[axis + 1:]
            yield "all_gather", d[-k:], (("axis", axis),), Sharding(gathered, state.partial)
    used = state.used_mesh_dims()
    for m in mesh_names:
        if m in used:
            continue
        for axis in range(rank):
            sliced = dims[:axis] + (dims[axis] + (m,),) + dims[axis + 1:]
            yield "local_slice", (m,), (("axis", axis),), Sharding(sliced, state.partial)
    for m, op in wanted:
        if m not in used:
            yield ("make_partial", (m,), (("op", op),),
                   Sharding(dims, state.partial + ((m, op),)))


@functools.lru_cache(maxsize=1 << 16)
def _plan(src: Sharding, dst: Sharding, mesh: MeshShape, shape: Shape, itemsize: int,
          cost_model: CostModel) -> tuple[Step, ...]:
    """Dijkstra from `src` to `dst`; heap entries are (seconds, steps, push order, layout)."""
    _check_endpoints(src, dst, mesh, shape)
    if src == dst:
        return ()
    have = src.partial_map
    keep = frozenset(m for m, op in dst.partial if have.get(m) == op)
    src_size = _local_size(src.dims, shape, mesh)
    assert src_size is not None, "checked by _check_endpoints"
    nbytes: dict[Sharding, int | None] = {src: src_size * itemsize}
    best: dict[Sharding, tuple[float, int]] = {src: (0.0, 0)}
    reached_by: dict[Sharding, Step] = {}
    done: set[Sharding] = set()
    heap: list[tuple[float, int, int, Sharding]] = [(0.0, 0, 0, src)]
    pushed = 0
    while heap:
        seconds, steps, _, state = heapq.heappop(heap)
        if state in done:
            continue
        if state == dst:
            return _path(reached_by, src, dst)
        done.add(state)
        in_bytes = nbytes[state]
        assert in_bytes is not None
        for kind, mesh_dims, attrs, nxt in _edges(state, keep, mesh.names, dst.partial):
            if nxt in done:
                continue
            if nxt not in nbytes:
                size = _local_size(nxt.dims, shape, mesh)
                nbytes[nxt] = None if size is None else size * itemsize
            out_bytes = nbytes[nxt]
            if out_bytes is None:
                continue
            cost = cost_model.collective_time(
                kind, mesh_dims, mesh, in_bytes if kind == "reduce_scatter" else out_bytes)
            key = (seconds + cost, steps + 1)
            old = best.get(nxt)
            if old is None or key < old:
                best[nxt] = key
                reached_by[nxt] = Step(kind, mesh_dims, attrs, state, nxt, out_bytes, cost)
                pushed += 1
                heapq.heappush(heap, (key[0], key[1], pushed, nxt))
    # Unreachable: from any valid layout, reduce, gather, slice and make_partial reach dst.
    raise AssertionError(f"planner found no path from {src.text()} to {dst.text()}")


def _path(reached_by: dict[Sharding, Step], src: Sharding, dst: Sharding) -> tuple[Step, ...]:
    steps: list[Step] = []
    state = dst
    while state != src:
        step = reached_by[state]
        steps.append(step)
        state = step.src
    return tuple(reversed(steps))
