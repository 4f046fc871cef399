"""Indexing: basic ``slice`` (start, stop, step per dim), ``take`` (gather along an axis) and
its transpose ``scatter_add``.

A sliced dim must stay whole unless the slice takes all of it. The index tensor's dims take the
place of ``take``'s indexed axis in the result; a sharded indexed axis makes a masked lookup
whose result is a pending sum. ``scatter_add`` adds each row of its updates into the row its
index names, in a result whose indexed axis is whole; sharding the index dims leaves a pending
sum (each device adds its own rows).
"""

from __future__ import annotations

from collections.abc import Sequence

from dtensor_compiler.ir import geometry
from dtensor_compiler.ir.attrs import Attr, AttrKind, AttrSpec, int_attr
from dtensor_compiler.ir.core import Operation, Value
from dtensor_compiler.ir.factors import FactorKind, FactorRule, RuleBuilder
from dtensor_compiler.ir.inference import check_axis, slice_length
from dtensor_compiler.ir.mesh_shape import MeshShape
from dtensor_compiler.ir.opdef import (
    Attrs,
    Factors,
    InferContext,
    OpDef,
    PaddingRead,
    ResultSig,
    Traits,
    register,
)
from dtensor_compiler.ir.ops.shape import STRUCTURAL
from dtensor_compiler.ir.sharding import ReduceOp
from dtensor_compiler.ir.types import TensorType
from dtensor_compiler.ir.vjp import VJPContext


def _bounds(attrs: Attrs) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    start, stop, step = attrs["start"], attrs["stop"], attrs["step"]
    assert isinstance(start, tuple) and isinstance(stop, tuple) and isinstance(step, tuple)
    return start, stop, step


def _slice(ts: Sequence[TensorType], attrs: Attrs, declared: Sequence[TensorType],
           ctx: InferContext) -> list[ResultSig]:
    t = ts[0]
    start, stop, step = _bounds(attrs)
    if not len(start) == len(stop) == len(step) == t.rank:
        raise ValueError(f"slice needs {t.rank} starts, stops and steps")
    shape = []
    for s, b, e, k in zip(t.shape, start, stop, step):
        if k <= 0 or not 0 <= b <= s or not b <= e <= s:
            raise ValueError(f"slice {b}:{e}:{k} is out of range for a dim of size {s}")
        shape.append(slice_length(b, e, k))
    return [(t.dtype, tuple(shape))]


def _slice_rule(attrs: Attrs, operands: Sequence[TensorType], result: TensorType
                ) -> FactorRule:
    b = RuleBuilder()
    start, stop, step = _bounds(attrs)
    res = [b.dim(s) if (st, sp, k) == (0, s, 1) else ()
           for s, st, sp, k in zip(operands[0].shape, start, stop, step)]
    return b.build([res], res)


def _localize_slice(op: Operation, mesh: MeshShape) -> dict[str, Attr]:
    """Sharded dims must be taken whole; they become the whole local range."""
    source = op.operands[0].type
    src, dst = source.sharding, op.type.sharding
    assert src is not None and dst is not None, "localize checks layouts first"
    start, stop, step = (list(b) for b in _bounds(op.attrs))
    for i, size in enumerate(source.shape):
        if src.dims[i] != dst.dims[i]:
            raise ValueError(f"slice changes the layout of dim {i} from {src.text()} to "
                             f"{dst.text()}")
        if not src.dims[i]:
            continue
        if (start[i], stop[i], step[i]) != (0, size, 1):
            raise ValueError(f"slice {start[i]}:{stop[i]}:{step[i]} cuts dim {i}, which is "
                             f"sharded over {list(src.dims[i])}")
        stop[i] = geometry.block_size(size, src.num_shards(i, mesh))
    return {"start": tuple(start), "stop": tuple(stop), "step": tuple(step)}


def _slice_vjp(ad: VJPContext, op: Operation, g: Value) -> list[Value | None]:
    """`g` put back where the slice took it from, zeros elsewhere: along a strided dim, each
    element followed by step - 1 zeros; then zeros before and after."""
    x = op.operands[0]
    start, _, step = _bounds(op.attrs)
    out = g
    for d, (n, b, k) in enumerate(zip(x.type.shape, start, step)):
        shape = out.type.shape
        if shape[d] == 0:
            return [ad.full(x.type.shape, x.type.dtype, 0.0)]
        if k > 1:
            one = ad.reshape(out, shape[:d + 1] + (1,) + shape[d + 1:])
            gaps = ad.full(shape[:d + 1] + (k - 1,) + shape[d + 1:], g.type.dtype, 0.0)
            woven = ad.emit("concatenate", [one, gaps], {"axis": d + 1})
            spread = ad.reshape(woven, shape[:d] + (shape[d] * k,) + shape[d + 1:])
            length = (shape[d] - 1) * k + 1
            out = ad.emit("slice", [spread], {
                "start": (0,) * len(shape),
                "stop": shape[:d] + (length,) + shape[d + 1:], "step": (1,) * len(shape)})
        shape = out.type.shape
        pieces = []
        for extent in (b, n - b - shape[d]):
            if extent:
                pieces.append(ad.full(shape[:d] + (extent,) + shape[d + 1:], g.type.dtype, 0.0))
        if pieces:
            parts = [pieces[0], out, *pieces[1:]] if b else [out, *pieces]
            out = ad.emit("concatenate", parts, {"axis": d})
    return [ad.to_operand(out, x)]


SLICE = register(OpDef(
    name="slice", operands=1, infer=_slice,
    attrs=(AttrSpec("start", AttrKind.INTS), AttrSpec("stop", AttrKind.INTS),
           AttrSpec("step", AttrKind.INTS)),
    sharding=Factors(_slice_rule), folds=True, traits=STRUCTURAL, localize=_localize_slice,
    vjp=_slice_vjp))


def _take(ts: Sequence[TensorType], attrs: Attrs, declared: Sequence[TensorType],
          ctx: InferContext) -> list[ResultSig]:
    table, idx = ts
    axis = int_attr(attrs, "axis")
    check_axis(axis, table.rank)
    if not idx.dtype.startswith(("i", "u")):
        raise ValueError(f"take indices must be integers, got {idx.dtype}")
    return [(table.dtype, table.shape[:axis] + idx.shape + table.shape[axis + 1:])]


def _take_rule(attrs: Attrs, operands: Sequence[TensorType], result: TensorType
               ) -> FactorRule:
    b = RuleBuilder()
    table, idx = operands
    axis = int_attr(attrs, "axis")
    tdims = [b.dim(s) for s in table.shape]
    # The looked-up dim is summed over: a device holding a block of it looks up the indices
    # that fall in its block and gives the additive identity (-0.0, 0) for the others, so the
    # result is a pending sum (the vocabulary-parallel embedding). Bool has no such sum.
    tdims[axis] = (() if table.dtype == "bool" else
                   b.dim(table.shape[axis], FactorKind.REDUCED, ReduceOp.SUM))
    idims = [b.dim(s) for s in idx.shape]
    return b.build([tdims, idims], tdims[:axis] + idims + tdims[axis + 1:])


def _take_reads_padding(op: Operation) -> list[PaddingRead]:
    """Padded indices would be looked up (and fail the range check): they must be zeros. The
    table's padded rows are never looked up, since every valid index is below its extent."""
    return [PaddingRead(1, tuple(range(op.operands[1].type.rank)), ReduceOp.SUM)]


def _take_vjp(ad: VJPContext, op: Operation, g: Value) -> list[Value | None]:
    """Every looked-up row's cotangent added into the row it came from."""
    table, indices = op.operands
    axis = int_attr(op.attrs, "axis")
    rows = ad.emit("scatter_add", [g, indices], {"axis": axis, "size": table.type.shape[axis]})
    return [ad.to_operand(rows, table), None]


TAKE = register(OpDef(name="take", operands=2, infer=_take,
                      attrs=(AttrSpec("axis", AttrKind.INT),), sharding=Factors(_take_rule),
                      folds=True, traits=Traits(linear_in=(0,)),
                      reads_padding=_take_reads_padding, vjp=_take_vjp))
"""``np.take(table, indices, axis)`` with in-range indices. With the table's `axis` sharded,
each device looks up only the indices in its block (a masked lookup) and the result is a
pending sum."""


def _index_dims(attrs: Attrs, indices: TensorType) -> range:
    """The dims of scatter_add's updates that the indices index."""
    axis = int_attr(attrs, "axis")
    return range(axis, axis + indices.rank)


def _scatter_add(ts: Sequence[TensorType], attrs: Attrs, declared: Sequence[TensorType],
                 ctx: InferContext) -> list[ResultSig]:
    updates, idx = ts
    axis, size = attrs["axis"], attrs["size"]
    assert isinstance(axis, int) and isinstance(size, int)
    if not idx.dtype.startswith(("i", "u")):
        raise ValueError(f"scatter_add indices must be integers, got {idx.dtype}")
    if not 0 <= axis <= updates.rank - idx.rank or size < 0:
        raise ValueError(f"scatter_add axis {axis} and size {size} do not fit updates of rank "
                         f"{updates.rank} and indices of rank {idx.rank}")
    if updates.shape[axis:axis + idx.rank] != idx.shape:
        raise ValueError(f"scatter_add updates {list(updates.shape)} do not hold indices "
                         f"{list(idx.shape)} at axis {axis}")
    return [(updates.dtype, updates.shape[:axis] + (size,) + updates.shape[axis + idx.rank:])]


def _scatter_add_rule(attrs: Attrs, operands: Sequence[TensorType], result: TensorType
                      ) -> FactorRule:
    """Rows of the updates sharded by their index dims are added on the devices that hold
    them: a pending sum (none for bool, which has no sum). The indexed axis stays whole."""
    b = RuleBuilder()
    updates, idx = operands
    index_dims = _index_dims(attrs, idx)
    kind = FactorKind.PASS_THROUGH if updates.dtype == "bool" else FactorKind.REDUCED
    dims = [(() if kind is FactorKind.PASS_THROUGH else b.dim(s, kind, ReduceOp.SUM))
            if i in index_dims else b.dim(s) for i, s in enumerate(updates.shape)]
    first = index_dims.start
    result_dims = dims[:first] + [()] + dims[index_dims.stop:]
    return b.build([dims, dims[first:index_dims.stop]], result_dims)


def _scatter_add_reads_padding(op: Operation) -> list[PaddingRead]:
    """Padded rows of the updates are summed in (zeros), padded indices would be out of range
    (zeros)."""
    updates, idx = op.operands
    return [PaddingRead(0, tuple(_index_dims(op.attrs, idx.type)), ReduceOp.SUM),
            PaddingRead(1, tuple(range(idx.type.rank)), ReduceOp.SUM)]


def _scatter_add_vjp(ad: VJPContext, op: Operation, g: Value) -> list[Value | None]:
    updates, indices = op.operands
    return [ad.to_operand(ad.emit("take", [g, indices], {"axis": op.attrs["axis"]}), updates),
            None]


SCATTER_ADD = register(OpDef(
    name="scatter_add", operands=2, infer=_scatter_add,
    attrs=(AttrSpec("axis", AttrKind.INT), AttrSpec("size", AttrKind.INT)),
    sharding=Factors(_scatter_add_rule), folds=True, traits=Traits(linear_in=(0,)),
    reads_padding=_scatter_add_reads_padding, vjp=_scatter_add_vjp))
"""``scatter_add(updates, indices)``: a result of `size` rows along `axis`, zeros but for
each ``updates[..., i, ...]`` added into row ``indices[i]`` (numpy's ``np.add.at``; negative
indices count from the end). The transpose of ``take``."""
