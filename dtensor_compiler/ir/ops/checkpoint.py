"""Checkpoint ops: saving values to files and restoring them, as nodes of the program.

A save starts as one global ``save`` of the values and their names (what `dtc.save` traces,
and what the checkpoint API builds); the ``expand-checkpoints`` pass turns it into the
program that runs:

- ``save_shard`` per writer device: the device writes the blocks it is the lowest device id
  to hold (its operands, each that device's own block) into its data file;
- ``barrier``: every writer has finished;
- ``merge_index``: one device reads the data files' headers and commits the index, which
  names every saved slice (its operands are the saved values, for their types and layouts);
- ``barrier``: the checkpoint is committed before anyone goes on.

A restore is a ``restore_shard`` per tensor: every device reads the part of the stored slices
that its block of the declared result type needs; a ``barrier`` ends it, where every
process learns whether any failed to read. None of these ops has a factor rule: their
operands come without pending reductions, in the layouts they have.
"""

from __future__ import annotations

from collections.abc import Sequence

from dtensor_compiler.ir import slice_spec
from dtensor_compiler.ir.attrs import AttrKind, AttrSpec
from dtensor_compiler.ir.core import Level, Operation
from dtensor_compiler.ir.inference import declared_type
from dtensor_compiler.ir.opdef import (
    Attrs,
    Barrier,
    Effect,
    InferContext,
    OpDef,
    ResultSig,
    register,
)
from dtensor_compiler.ir.sharding import Sharding
from dtensor_compiler.ir.types import TensorType

PREFIX = AttrSpec("prefix", AttrKind.STR)
NAMES = AttrSpec("names", AttrKind.STRS)
SLICES = AttrSpec("slices", AttrKind.STRS, default=(), elide_default=True)
"""Per operand, the box of the saved tensor it is (`ir/slice_spec.py`); empty: every operand
is its whole tensor."""


def settled_operands(op: Operation) -> tuple[Sharding | None, ...]:
    """Each operand in its own layout, its pending reductions applied."""
    out = []
    for v in op.operands:
        sharding = v.type.sharding
        out.append(None if sharding is None else sharding.without_partial())
    return tuple(out)


def _named_values(ts: Sequence[TensorType], attrs: Attrs, declared: Sequence[TensorType],
                  ctx: InferContext) -> list[ResultSig]:
    names = attrs["names"]
    assert isinstance(names, tuple)
    if len(names) != len(ts):
        raise ValueError(f"{len(ts)} values but {len(names)} names")
    slices = attrs.get("slices") or ("",) * len(names)
    assert isinstance(slices, tuple)
    if len(slices) != len(names):
        raise ValueError(f"{len(names)} names but {len(slices)} slices")
    entries = list(zip(names, slices))
    for name, text in entries:
        if entries.count((name, text)) > 1 or (names.count(name) > 1 and
                                               (name, "") in entries):
            raise ValueError(f"the tensor {name!r} is saved twice")
    for text, t in zip(slices, ts):
        local = ctx.level is not Level.GLOBAL
        slice_spec.placement(text, t.global_shape(ctx.mesh) if local else t.shape)
    devices = ctx.mesh.num_devices
    writers = attrs.get("writers")
    for device in (attrs.get("device"), *(writers if isinstance(writers, tuple) else ())):
        if isinstance(device, int) and not 0 <= device < devices:
            raise ValueError(f"device {device} is not one of the mesh's {devices}")
    return []


def _no_operands(ts: Sequence[TensorType], attrs: Attrs, declared: Sequence[TensorType],
                 ctx: InferContext) -> list[ResultSig]:
    return []


def _restored(ts: Sequence[TensorType], attrs: Attrs, declared: Sequence[TensorType],
              ctx: InferContext) -> list[ResultSig]:
    t = declared_type(declared)
    return [(t.dtype, t.shape)]


_SETTLED = Barrier(operands=settled_operands)

SAVE = register(OpDef(
    name="save", operands=None, results=0, infer=_named_values,
    attrs=(NAMES, PREFIX, SLICES,
           AttrSpec("as_bf16", AttrKind.STRS, default=(), elide_default=True)),
    sharding=_SETTLED, folds=False, effects=frozenset({Effect.WRITE, Effect.SYNC}),
    levels=frozenset({Level.GLOBAL})))
"""Save the operands under `names` (each the box `slices` gives of its tensor) as the
checkpoint `prefix` (expanded before it runs); the float32 values named in `as_bf16` are
stored as bfloat16. A name may repeat only with disjoint slices."""

SAVE_SHARD = register(OpDef(
    name="save_shard", operands=None, results=0, infer=_named_values,
    attrs=(AttrSpec("device", AttrKind.INT), NAMES, PREFIX, SLICES), sharding=_SETTLED,
    folds=False,
    effects=frozenset({Effect.WRITE})))
"""Device `device` writes its block of each operand to its data file of `prefix`."""

BARRIER = register(OpDef(
    name="barrier", operands=0, results=0, infer=_no_operands,
    attrs=(AttrSpec("name", AttrKind.STR),), sharding=Barrier(), folds=False,
    effects=frozenset({Effect.SYNC})))
"""Every device waits until all have reached it."""

MERGE_INDEX = register(OpDef(
    name="merge_index", operands=None, results=0, infer=_named_values,
    attrs=(NAMES, PREFIX, AttrSpec("writers", AttrKind.INTS), SLICES), sharding=_SETTLED,
    folds=False, effects=frozenset({Effect.READ, Effect.WRITE})))
"""Commit the index of `prefix` from the data files of `writers`; the operands' types and
layouts are what the index records."""

RESTORE_SHARD = register(OpDef(
    name="restore_shard", operands=0, infer=_restored, attrs=(AttrSpec("name", AttrKind.STR),
                                                              PREFIX),
    declared_type=True, sharding=Barrier(), folds=False, effects=frozenset({Effect.READ})))
"""The tensor `name` of the checkpoint `prefix`, read in the layout of its declared type."""
