"""mask-padding: put a reduction's identity into padding wherever an op reads it as data.

Expects: a global-shape module whose layouts are final (after insert-collectives). Values laid
out unevenly (a dim that its shards do not divide, see `ir.geometry`) have padding in their
localized blocks, which holds garbage unless a ``mask`` op filled it.

Guarantees: every padding read an op states (`opdef.PaddingRead`: by default each operand dim
made of one reduced factor, so sums, means, max/min/prod, contractions, and the variance and
softmax built from them) sees the identity of its reduction. For each read of an operand that
has padding along the read dims and does not already hold that identity (its type's `pad`),
a ``mask`` op is inserted before the reader, and the reader takes its result instead; one
mask per (value, fill) serves every reader in the function. Nothing else changes; an even
module is left as it is.

```
%s = reduce_sum %x {axes = [0]} : f32[] @ {} partial(x:sum)              // x=4, %x: f32[10]
%m = mask %x {axes = [0], fill = sum} : f32[10] @ {x} pad(sum)           // after
%s = reduce_sum %m {axes = [0]} : f32[] @ {} partial(x:sum)
```
"""

from __future__ import annotations

from dataclasses import dataclass

from dtensor_compiler.ir.builder import make_op
from dtensor_compiler.ir.core import Function, Module, Operation, Value
from dtensor_compiler.ir.opdef import InferContext
from dtensor_compiler.ir.ops.padding import padded_dims, padding_reads, unmasked_dims
from dtensor_compiler.ir.sharding import ReduceOp, Sharding
from dtensor_compiler.ir.types import TensorType
from dtensor_compiler.pass_manager import ModulePass, PassContext, register_pass


@register_pass
@dataclass(frozen=True)
class MaskPaddingPass(ModulePass):
    """Insert ``mask`` ops before the ops that read padding as data."""

    name = "mask-padding"

    def apply(self, module: Module, ctx: PassContext) -> bool:
        infer = InferContext(module.mesh, module.level)
        changed = False
        seen: dict[tuple[tuple[int, ...], Sharding], bool] = {}
        for func in module.functions:
            if any(_has_padding(v.type, infer, seen) for v in func.values()):
                changed |= _mask_function(func, infer)
        return changed


def _has_padding(t: TensorType, infer: InferContext,
                 seen: dict[tuple[tuple[int, ...], Sharding], bool]) -> bool:
    """Whether `t` has padding; `seen` memoizes it by shape and layout (the layers of a deep
    model repeat few of them)."""
    if t.sharding is None:
        return False
    key = (t.shape, t.sharding)
    if key not in seen:
        seen[key] = bool(padded_dims(t, infer))
    return seen[key]


def _mask_function(func: Function, infer: InferContext) -> bool:
    """Insert the masks of one function; whether it inserted any."""
    masks: dict[tuple[int, ReduceOp], Value] = {}
    ops: list[Operation] = []
    for op in func.ops:
        for read in padding_reads(op):
            if not unmasked_dims(op, read, infer):
                continue
            value = op.operands[read.operand]
            key = (id(value), read.fill)
            if key not in masks:
                mask = make_op("mask", [value], {"axes": padded_dims(value.type, infer),
                                                 "fill": read.fill}, infer,
                               sharding=value.type.sharding, loc=op.loc)
                ops.append(mask)
                assert mask.result is not None
                masks[key] = mask.result
            op.set_operand(read.operand, masks[key])
        ops.append(op)
    func.ops = ops
    return bool(masks)
