"""Layout changes: ``relayout`` (a wanted layout, before planning) and the collectives that carry
it out.

``relayout`` says "this value, in that layout" and exists only in global IR; insert-collectives
replaces each by the collectives the planner picks. A collective's result layout follows from
its operand's (`CollectiveDef.transfer`):

    all_reduce      reduces pending reductions (``op``) over `mesh_dims`
    reduce_scatter  ... and shards dim `axis` over them (appended minor-most)
    all_gather      unshards the minor-most `mesh_dims` of dim `axis`
    all_to_all      moves the minor-most `mesh_dims` of `concat_axis` to the end of `split_axis`
    local_slice     shards dim `axis` over unused `mesh_dims`: each device keeps its block
    make_partial    makes a whole value pending (``op``) over unused `mesh_dims`: coordinate 0
                    keeps the value, the other devices hold the reduction's identity

The last two move no data. Each definition also lists the planner's moves (its edges from a
layout) and how the cost model prices it. The planner offers the collectives' moves in the
order they are defined here, which breaks ties between equally cheap plans.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import combinations, permutations

from dtensor_compiler.ir import geometry
from dtensor_compiler.ir.attrs import AttrKind, AttrSpec, int_attr
from dtensor_compiler.ir.collective import (
    Algorithm,
    Attrs,
    Charged,
    CollectiveDef,
    Move,
    MoveContext,
)
from dtensor_compiler.ir.core import Level, Operation, Value
from dtensor_compiler.ir.mesh_shape import MeshShape
from dtensor_compiler.ir.opdef import (
    Barrier,
    InferContext,
    OpDef,
    ResultSig,
    operands_as_they_are,
    register,
    same_type,
)
from dtensor_compiler.ir.reasons import OutLayout
from dtensor_compiler.ir.sharding import ReduceOp, Sharding
from dtensor_compiler.ir.types import TensorType
from dtensor_compiler.ir.vjp import VJPContext

Shape = tuple[int, ...]
MESH_DIMS = AttrSpec("mesh_dims", AttrKind.STRS)
REDUCTION = AttrSpec("op", AttrKind.REDUCE_OP)
AXIS = AttrSpec("axis", AttrKind.INT)
AS_IS = Barrier(operands_as_they_are)


def _same_type(ts: Sequence[TensorType], attrs: Attrs, declared: Sequence[TensorType],
               ctx: InferContext) -> list[ResultSig]:
    return [(ts[0].dtype, ts[0].shape)]


def _relayout_is_identity(op: Operation) -> bool:
    """Only when both layouts are set (a pinned layout on a value without one yet stays), and
    not for the relayout that pins an output layout: propagation reads from it that the output
    was asked for in that layout, pending reductions included."""
    return same_type(op) and op.type.sharding is not None and not isinstance(op.why, OutLayout)


def _relayout_vjp(ad: VJPContext, op: Operation, g: Value) -> list[Value | None]:
    """Back to the source's layout: the one it has (an argument's in_layout), else the one
    propagation gives it (``relayout_like``)."""
    source = op.operands[0]
    if source.type.sharding is None:
        return [ad.emit_relayout_like(g, source)]
    return [ad.emit_relayout(g, source.type.sharding)]


def _relayout_like_type(ts: Sequence[TensorType], attrs: Attrs, declared: Sequence[TensorType],
                        ctx: InferContext) -> list[ResultSig]:
    value, like = ts
    if value.rank != like.rank:
        raise ValueError(f"a value of rank {value.rank} cannot take the layout of a value of "
                         f"rank {like.rank}")
    return [(value.dtype, value.shape)]


def _relayout_like_vjp(ad: VJPContext, op: Operation, g: Value) -> list[Value | None]:
    return [ad.emit_relayout_like(g, op.operands[0]), None]


RELAYOUT = register(OpDef(name="relayout", operands=1, infer=_same_type, sharding=AS_IS,
                          folds=False, levels=frozenset({Level.GLOBAL}),
                          identity=_relayout_is_identity, vjp=_relayout_vjp))
"""The operand in the layout of the result type; planned by insert-collectives."""

RELAYOUT_LIKE = register(OpDef(name="relayout_like", operands=2, infer=_relayout_like_type,
                               sharding=AS_IS, folds=False, levels=frozenset({Level.GLOBAL}),
                               vjp=_relayout_like_vjp))
"""The first operand in the layout propagation gives the second (pending reductions
applied): a ``relayout`` whose target is known only once layouts are chosen, which
propagate-layouts turns into one."""


# -- shared pieces --------------------------------------------------------------------------------


def _mesh_dims(name: str, attrs: Attrs) -> tuple[str, ...]:
    md = attrs["mesh_dims"]
    assert isinstance(md, tuple)
    if not md:
        raise ValueError(f"{name} needs at least one mesh dim")
    return md


def _op(attrs: Attrs) -> ReduceOp:
    return ReduceOp.parse(attrs["op"])


def _reduce(name: str, attrs: Attrs, src: Sharding, mesh: MeshShape
            ) -> tuple[list[tuple[str, ...]], dict[str, ReduceOp]]:
    """The dims of `src` and its partials without the reduced ones; ValueError unless each
    mesh dim carries the pending reduction and it may be applied now (see `Sharding`)."""
    op = _op(attrs)
    md = _mesh_dims(name, attrs)
    partial = src.partial_map
    for m in md:
        if partial.get(m) != op:
            raise ValueError(f"{name} over {m!r} needs a pending {op} on {m!r}, layout is "
                             f"{src.text()}")
        del partial[m]
    if not src.may_reduce(md, op, mesh.names):
        raise ValueError(f"{name} over {list(md)}: pending reductions apply in mesh-dim order, "
                         f"and {src.text()} has one of another kind before them on {mesh.text()}")
    return list(src.dims), partial


def _unshard(name: str, attrs: Attrs, src: Sharding, axis: int) -> list[tuple[str, ...]]:
    """The dims of `src` with the mesh dims removed from the end of dim `axis`."""
    md = _mesh_dims(name, attrs)
    dims = list(src.dims)
    if dims[axis][len(dims[axis]) - len(md):] != md:
        raise ValueError(f"{name} over {list(md)} needs dim {axis} to end with them, layout "
                         f"is {src.text()}")
    dims[axis] = dims[axis][: len(dims[axis]) - len(md)]
    return dims


def _unused(name: str, attrs: Attrs, src: Sharding) -> tuple[str, ...]:
    md = _mesh_dims(name, attrs)
    if any(m in src.used_mesh_dims() for m in md):
        raise ValueError(f"{name} over {list(md)}: already used in {src.text()}")
    return md


def _define(name: str, attrs: tuple[AttrSpec, ...], collective: CollectiveDef) -> OpDef:
    def infer(ts: Sequence[TensorType], given: Attrs, declared: Sequence[TensorType],
              ctx: InferContext) -> list[ResultSig]:
        t = ts[0]
        for m in _mesh_dims(name, given):
            if m not in ctx.mesh.names:
                raise ValueError(f"mesh dim {m!r} is not in {ctx.mesh.text()}")
        if ctx.level is Level.GLOBAL:
            return [(t.dtype, t.shape)]
        if t.sharding is None:
            raise ValueError(f"{name} needs a layout on its operand")
        dst = collective.transfer(given, t.sharding, ctx.mesh)
        return [(t.dtype, dst.local_shape(t.global_shape(ctx.mesh), ctx.mesh))]

    return register(OpDef(name=name, operands=1, infer=infer, attrs=(MESH_DIMS, *attrs),
                          sharding=AS_IS, folds=False, collective=collective))


def _reducible(state: Sharding, ctx: MoveContext) -> Iterator[tuple[ReduceOp, tuple[str, ...],
                                                                   tuple[tuple[str, ReduceOp],
                                                                         ...]]]:
    """Every non-empty set of pending mesh dims that share a reduction and that the target
    does not keep, with the partials left after reducing them."""
    pending = [(m, op) for m, op in state.partial if m not in ctx.keep]
    for op in sorted({op for _, op in pending}):
        group = sorted((m for m, o in pending if o == op), key=ctx.mesh_names.index)
        for k in range(1, len(group) + 1):
            for subset in combinations(group, k):
                if state.may_reduce(subset, op, ctx.mesh_names):
                    yield op, subset, tuple(p for p in state.partial if p[0] not in subset)


# -- the collectives ------------------------------------------------------------------------------


def _all_reduce_moves(state: Sharding, ctx: MoveContext) -> Iterator[Move]:
    for op, subset, rest in _reducible(state, ctx):
        yield Move(subset, (("op", op),), Sharding(state.dims, rest))


def _all_reduce(attrs: Attrs, src: Sharding, mesh: MeshShape) -> Sharding:
    dims, partial = _reduce("all_reduce", attrs, src, mesh)
    return Sharding(tuple(dims), tuple(partial.items()))


ALL_REDUCE = _define("all_reduce", (REDUCTION,), CollectiveDef(
    moves_data=True, ring_passes=2, charged=Charged.OUTPUT, transfer=_all_reduce,
    moves=_all_reduce_moves, reshapes=False,
    algorithms=frozenset({Algorithm.RING, Algorithm.HALVING_DOUBLING, Algorithm.WHOLE_EXCHANGE})))


def _reduce_scatter_moves(state: Sharding, ctx: MoveContext) -> Iterator[Move]:
    dims = state.dims
    for op, subset, rest in _reducible(state, ctx):
        for order in permutations(subset):
            for axis in range(len(dims)):
                grown = dims[:axis] + (dims[axis] + order,) + dims[axis + 1:]
                yield Move(order, (("op", op), ("axis", axis)), Sharding(grown, rest))


def _reduce_scatter(attrs: Attrs, src: Sharding, mesh: MeshShape) -> Sharding:
    dims, partial = _reduce("reduce_scatter", attrs, src, mesh)
    axis = int_attr(attrs, "axis")
    dims[axis] = dims[axis] + _mesh_dims("reduce_scatter", attrs)
    return Sharding(tuple(dims), tuple(partial.items()))


REDUCE_SCATTER = _define("reduce_scatter", (REDUCTION, AXIS), CollectiveDef(
    moves_data=True, ring_passes=1, charged=Charged.SCATTERED, transfer=_reduce_scatter,
    moves=_reduce_scatter_moves,
    algorithms=frozenset({Algorithm.RING, Algorithm.HALVING_DOUBLING})))


def _all_to_all_moves(state: Sharding, ctx: MoveContext) -> Iterator[Move]:
    dims = state.dims
    for concat_axis, d in enumerate(dims):
        if not d:
            continue
        for split_axis in range(len(dims)):
            if split_axis == concat_axis:
                continue
            for k in range(1, len(d) + 1):  # a group of mesh dims moves in one exchange
                moved = list(dims)
                moved[concat_axis] = d[:-k]
                moved[split_axis] = dims[split_axis] + d[-k:]
                yield Move(d[-k:], (("split_axis", split_axis), ("concat_axis", concat_axis)),
                           Sharding(tuple(moved), state.partial))


def _all_to_all(attrs: Attrs, src: Sharding, mesh: MeshShape) -> Sharding:
    dims = _unshard("all_to_all", attrs, src, int_attr(attrs, "concat_axis"))
    split = int_attr(attrs, "split_axis")
    dims[split] = dims[split] + _mesh_dims("all_to_all", attrs)
    return Sharding(tuple(dims), src.partial)


ALL_TO_ALL = _define(
    "all_to_all", (AttrSpec("split_axis", AttrKind.INT), AttrSpec("concat_axis", AttrKind.INT)),
    CollectiveDef(moves_data=True, ring_passes=1, charged=Charged.INPUT, transfer=_all_to_all,
                  moves=_all_to_all_moves,
                  algorithms=frozenset({Algorithm.RING, Algorithm.BRUCK})))


def _all_gather_moves(state: Sharding, ctx: MoveContext) -> Iterator[Move]:
    dims = state.dims
    for axis, d in enumerate(dims):
        for k in range(1, len(d) + 1):
            gathered = dims[:axis] + (d[:-k],) + dims[axis + 1:]
            yield Move(d[-k:], (("axis", axis),), Sharding(gathered, state.partial))


def _all_gather(attrs: Attrs, src: Sharding, mesh: MeshShape) -> Sharding:
    return Sharding(tuple(_unshard("all_gather", attrs, src, int_attr(attrs, "axis"))), src.partial)


ALL_GATHER = _define("all_gather", (AXIS,), CollectiveDef(
    moves_data=True, ring_passes=1, charged=Charged.GATHERED, transfer=_all_gather,
    moves=_all_gather_moves,
    algorithms=frozenset({Algorithm.RING, Algorithm.HALVING_DOUBLING})))


def _local_slice_moves(state: Sharding, ctx: MoveContext) -> Iterator[Move]:
    """One mesh dim at a time; and, onto a dim its shards would not divide, a group of them
    at once (flat blocks over several mesh dims need not line up with the blocks over the
    first of them alone, see `geometry.aligned`)."""
    dims = state.dims
    used = state.used_mesh_dims()
    free = [m for m in ctx.mesh_names if m not in used]
    for m in free:
        for axis in range(len(dims)):
            sliced = dims[:axis] + (dims[axis] + (m,),) + dims[axis + 1:]
            yield Move((m,), (("axis", axis),), Sharding(sliced, state.partial))
    for k in range(2, len(free) + 1):
        for group in permutations(free, k):
            for axis in range(len(dims)):
                grown = dims[axis] + group
                if geometry.splits(ctx.shape[axis], geometry.shard_count(grown, ctx.mesh)):
                    continue
                sliced = dims[:axis] + (grown,) + dims[axis + 1:]
                yield Move(group, (("axis", axis),), Sharding(sliced, state.partial))


def _local_slice(attrs: Attrs, src: Sharding, mesh: MeshShape) -> Sharding:
    md = _unused("local_slice", attrs, src)
    dims = list(src.dims)
    axis = int_attr(attrs, "axis")
    dims[axis] = dims[axis] + md
    return Sharding(tuple(dims), src.partial)


LOCAL_SLICE = _define("local_slice", (AXIS,), CollectiveDef(
    moves_data=False, ring_passes=0, charged=Charged.OUTPUT, transfer=_local_slice,
    moves=_local_slice_moves))


def _make_partial_moves(state: Sharding, ctx: MoveContext) -> Iterator[Move]:
    used = state.used_mesh_dims()
    for m, op in ctx.wanted:
        if m not in used and state.may_add_partial(m, op, ctx.mesh_names):
            yield Move((m,), (("op", op),), Sharding(state.dims, state.partial + ((m, op),)))


def _make_partial(attrs: Attrs, src: Sharding, mesh: MeshShape) -> Sharding:
    md = _unused("make_partial", attrs, src)
    op = _op(attrs)
    blocked = [m for m in md if not src.may_add_partial(m, op, mesh.names)]
    if blocked:
        raise ValueError(f"make_partial over {blocked}: {src.text()} has a pending reduction "
                         f"of another kind before it in mesh-dim order on {mesh.text()}")
    return Sharding(src.dims, src.partial + tuple((m, op) for m in md))


MAKE_PARTIAL = _define("make_partial", (REDUCTION,), CollectiveDef(
    moves_data=False, ring_passes=0, charged=Charged.OUTPUT, transfer=_make_partial,
    moves=_make_partial_moves, reshapes=False))

