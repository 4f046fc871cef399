"""Relayout planning: the cheapest sequence of collectives turning one sharding into another.

`plan_relayout` is a pure function of (source sharding, target sharding, mesh, global shape,
item size, cost model). It runs Dijkstra's algorithm over layouts: a state is a `Sharding` of
the value, an edge is one move of a collective (`CollectiveDef.moves`, so its effect on the
layout is exactly the collective's `transfer`), weighted by the cost model's time for it. Only
layouts whose shards fit the global shape are visited. Pending partial reductions that the
target keeps are carried through untouched; every other pending partial is reduced on the
way; a pending reduction the target has and the source lacks (or has with another op) is
created locally (`make_partial`). So every valid layout reaches every other.

Edges leaving a layout come from the collectives in the order they are defined
(`ir/ops/collectives.py`), which breaks ties between equally cheap plans:

    all_reduce      a non-empty set of pending partial mesh dims that share a reduce op
    reduce_scatter  such a set, in any order, appended to the end of one tensor dim
    all_to_all      the minor-most mesh dims (one or a group) of one tensor dim, moved to the
                    end of another
    all_gather      a non-empty suffix of one tensor dim's mesh dims
    local_slice     one unused mesh dim appended to one tensor dim (a copy, no communication)
    make_partial    one unused mesh dim made a pending reduction the target has (local)

Among plans of equal time the one with fewer steps wins, then the one found first. Plans are
memoized, since layout propagation asks for the same relayout costs many times.
"""

from __future__ import annotations

import functools
import heapq
from dataclasses import dataclass
from math import prod
from typing import NoReturn

from dtensor_compiler.cost import DEFAULT_COST_MODEL, CostModel
from dtensor_compiler.errors import PlanningError
from dtensor_compiler.ir import geometry, opdef
from dtensor_compiler.ir.attrs import Attr
from dtensor_compiler.ir.collective import MoveContext
from dtensor_compiler.ir.sharding import MeshShape, Sharding

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Step:
    """One collective of a plan: what it is, the layouts it goes between, what it costs."""

    kind: str
    mesh_dims: tuple[str, ...]
    attrs: tuple[tuple[str, Attr], ...]
    """The IR op's attributes other than `mesh_dims`, in the definition's order."""
    src: Sharding
    dst: Sharding
    nbytes: int
    """Per-device bytes of the result buffer."""
    seconds: float
    """The cost model's estimate of the step's time."""

    def attr_dict(self) -> dict[str, Attr]:
        """Every attribute of the IR op, `mesh_dims` included."""
        return {"mesh_dims": self.mesh_dims, **dict(self.attrs)}


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


def _local_size(dims: tuple[tuple[str, ...], ...], shape: Shape, mesh: MeshShape) -> int:
    """Elements per device, padding included."""
    return prod(geometry.local_shape(shape, dims, mesh))


@functools.lru_cache(maxsize=1 << 16)
def _plan(src: Sharding, dst: Sharding, mesh: MeshShape, shape: Shape, itemsize: int,
          cost_model: CostModel) -> tuple[Step, ...]:
    """Dijkstra from `src` to `dst`; heap entries are (seconds, steps, push order, layout)."""
    _check_endpoints(src, dst, mesh, shape)
    if src == dst:
        return ()
    ctx = MoveContext(mesh, _kept(src, dst, mesh.names), dst.partial, shape)
    collectives = [(d.name, d.collective) for d in opdef.collectives() if d.collective]
    nbytes: dict[Sharding, int] = {src: _local_size(src.dims, shape, mesh) * itemsize}
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
        for kind, collective in collectives:
            for move in collective.moves(state, ctx):
                nxt = move.result
                if nxt in done or not geometry.changes_align(shape, state.dims, nxt.dims, mesh):
                    continue
                if nxt not in nbytes:
                    nbytes[nxt] = _local_size(nxt.dims, shape, mesh) * itemsize
                out_bytes = nbytes[nxt]
                cost = cost_model.collective_time(collective, move.mesh_dims, mesh, in_bytes,
                                                  out_bytes)
                key = (seconds + cost, steps + 1)
                old = best.get(nxt)
                if old is not None and key >= old:
                    continue
                best[nxt] = key
                reached_by[nxt] = Step(kind, move.mesh_dims, move.attrs, state, nxt, out_bytes,
                                       cost)
                pushed += 1
                heapq.heappush(heap, (key[0], key[1], pushed, nxt))
    # Unreachable: from any valid layout, reduce, gather, slice and make_partial reach dst
    # (gathering a dim whole and slicing a whole dim always line up).
    raise AssertionError(f"planner found no path from {src.text()} to {dst.text()}")


def _kept(src: Sharding, dst: Sharding, names: tuple[str, ...]) -> frozenset[str]:
    """The pending reductions of `src` that the plan keeps: those `dst` has too, except one
    that would block a reduction the plan must apply, or one it must add, of another kind
    after it in mesh order (pending reductions apply in mesh-dim order, see `Sharding`); those
    are reduced and added again."""
    have = src.partial_map
    keep = {m for m, op in dst.partial if have.get(m) == op}
    changed = True
    while changed:
        changed = False
        others = [(m, op) for m, op in src.partial if m not in keep]
        others += [(m, op) for m, op in dst.partial if m not in keep]
        for p in sorted(keep):
            if any(names.index(m) > names.index(p) and op != have[p] for m, op in others):
                keep.discard(p)
                changed = True
    return frozenset(keep)


def _path(reached_by: dict[Sharding, Step], src: Sharding, dst: Sharding) -> tuple[Step, ...]:
    steps: list[Step] = []
    state = dst
    while state != src:
        step = reached_by[state]
        steps.append(step)
        state = step.src
    return tuple(reversed(steps))
