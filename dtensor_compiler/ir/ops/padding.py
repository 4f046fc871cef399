"""Padding: ``mask``, which puts a reduction's identity into the padding of uneven blocks.

Where a dim does not divide its shards, every device holds a block of the same room and the
trailing blocks are partly or wholly padding (`ir.geometry`). Padding usually holds garbage,
which is harmless until an op reads it as data: a reduction or contraction over the padded
dim, or a lookup by padded indices (`opdef.PaddingRead`). ``mask`` selects the identity of
its `fill` reduction into the padding along `axes` (every padded dim of its operand) and
leaves the valid elements as they are, so its result type records ``pad(<fill>)``.

It selects (``where(valid, x, identity)``), never multiplies: padding left by ``log`` or a
division may hold inf or NaN, and ``0 * inf`` is NaN. In global IR, where there is no
padding, ``mask`` is the identity of its operand; the mask-padding pass inserts it there,
after layouts are final, and localize keeps it.

```
%1 = mask %0 {axes = [0], fill = sum} : f32[10,6] @ {x, -} pad(sum)      // global
%1 = mask %0 {axes = [0], fill = sum} : f32[3/10,6] @ {x, -} pad(sum)    // localized, x=4
```
"""

from __future__ import annotations

from collections.abc import Sequence

from dtensor_compiler.ir import factors, geometry, opdef
from dtensor_compiler.ir.attrs import AttrKind, AttrSpec
from dtensor_compiler.ir.core import Level, Operation
from dtensor_compiler.ir.factors import FactorKind
from dtensor_compiler.ir.opdef import (
    Attrs,
    InferContext,
    OpDef,
    PaddingRead,
    ResultSig,
    Traits,
    register,
)
from dtensor_compiler.ir.ops.elementwise import BROADCASTING
from dtensor_compiler.ir.sharding import ReduceOp
from dtensor_compiler.ir.types import TensorType


def padded_dims(t: TensorType, ctx: InferContext) -> tuple[int, ...]:
    """The dims of `t` that have padding, at the module's level."""
    if t.sharding is None:
        return ()
    if ctx.level is Level.LOCAL:
        return tuple(i for i, e in enumerate(t.extents or ()) if e is not None)
    return geometry.uneven_dims(t.shape, t.sharding.dims, ctx.mesh)


def _mask(ts: Sequence[TensorType], attrs: Attrs, declared: Sequence[TensorType],
          ctx: InferContext) -> list[ResultSig]:
    t = ts[0]
    axes = attrs["axes"]
    assert isinstance(axes, tuple)
    padded = padded_dims(t, ctx)
    if tuple(axes) != padded:
        raise ValueError(f"mask axes {list(axes)} must be the operand's padded dims "
                         f"{list(padded)}")
    return [(t.dtype, t.shape)]


def _fill(op: Operation) -> ReduceOp:
    return ReduceOp.parse(op.attrs["fill"])


MASK = register(OpDef(
    name="mask", operands=1, infer=_mask,
    attrs=(AttrSpec("axes", AttrKind.INTS), AttrSpec("fill", AttrKind.REDUCE_OP)),
    sharding=BROADCASTING,
    folds=False, traits=Traits(elementwise=True), fills=_fill))


def unmasked_dims(op: Operation, read: PaddingRead, ctx: InferContext) -> tuple[int, ...]:
    """The dims along which `read` sees padding of its operand that does not hold the
    identity it reads it as (empty: no mask is needed)."""
    t = op.operands[read.operand].type
    if t.pad == read.fill:
        return ()
    return tuple(d for d in padded_dims(t, ctx) if d in read.dims)


def padding_reads(op: Operation) -> list[PaddingRead]:
    """The padding reads of `op`: its definition's, or those its factor rule implies."""
    definition = opdef.lookup(op.name)
    if definition.reads_padding is not None:
        return definition.reads_padding(op)
    if not isinstance(definition.sharding, opdef.Factors) or op.result is None:
        return []
    rule = definition.sharding.rule(op.attrs, [v.type for v in op.operands], op.result.type)
    return list(_reduced_reads(rule))


def _reduced_reads(rule: factors.FactorRule) -> list[PaddingRead]:
    out = []
    for i, operand in enumerate(rule.operands):
        by_fill: dict[ReduceOp, list[int]] = {}
        for d, dim_factors in enumerate(operand):
            reduced = [f for f in dim_factors if rule.kind(f) is FactorKind.REDUCED]
            if reduced:
                by_fill.setdefault(rule.reduce_op(reduced[0]), []).append(d)
        out += [PaddingRead(i, tuple(dims), fill) for fill, dims in by_fill.items()]
    return out
