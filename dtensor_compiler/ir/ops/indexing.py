"""Indexing: basic ``slice`` (start, stop, step per dim) and ``take`` (gather along an axis).

A sliced dim must stay whole unless the slice takes all of it. The index tensor's dims take the
place of ``take``'s indexed axis in the result; a sharded indexed axis makes a masked lookup
whose result is a pending sum.
"""

from __future__ import annotations

from collections.abc import Sequence

from dtensor_compiler.ir import geometry
from dtensor_compiler.ir.attrs import Attr, AttrKind, AttrSpec
from dtensor_compiler.ir.core import Operation
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


SLICE = register(OpDef(
    name="slice", operands=1, infer=_slice,
    attrs=(AttrSpec("start", AttrKind.INTS), AttrSpec("stop", AttrKind.INTS),
           AttrSpec("step", AttrKind.INTS)),
    sharding=Factors(_slice_rule), folds=True, traits=STRUCTURAL, localize=_localize_slice))


def _take(ts: Sequence[TensorType], attrs: Attrs, declared: Sequence[TensorType],
          ctx: InferContext) -> list[ResultSig]:
    table, idx = ts
    axis = attrs["axis"]
    assert isinstance(axis, int)
    check_axis(axis, table.rank)
    if not idx.dtype.startswith(("i", "u")):
        raise ValueError(f"take indices must be integers, got {idx.dtype}")
    return [(table.dtype, table.shape[:axis] + idx.shape + table.shape[axis + 1:])]


def _take_rule(attrs: Attrs, operands: Sequence[TensorType], result: TensorType
               ) -> FactorRule:
    b = RuleBuilder()
    table, idx = operands
    axis = attrs["axis"]
    assert isinstance(axis, int)
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


TAKE = register(OpDef(name="take", operands=2, infer=_take,
                      attrs=(AttrSpec("axis", AttrKind.INT),), sharding=Factors(_take_rule),
                      folds=True, traits=Traits(linear_in=(0,)),
                      reads_padding=_take_reads_padding))
"""``np.take(table, indices, axis)`` with in-range indices. With the table's `axis` sharded,
each device looks up only the indices in its block (a masked lookup) and the result is a
pending sum."""
