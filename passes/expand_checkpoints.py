"""expand-checkpoints: turn each ``save`` into the writers, barriers and index commit that run it.

Expects: a global-shape module whose values all have layouts (run propagate-layouts first).

Guarantees: no ``save`` is left. Each became, in its place (so after the values it saves are
computed, and in program order with every other effect):

```
save_shard %w, %b {device = 0, names = [w, b], prefix = "ck"}
    // why: device 0 writes w[0:4, 0:16], b (320 bytes)
save_shard %w {device = 4, names = [w], prefix = "ck"}
    // why: device 4 writes w[4:8, 0:16] (256 bytes)
barrier {name = save_shard}
merge_index %w, %b {names = [w, b], prefix = "ck", writers = [0, 4]}
barrier {name = merge_index}
```

A save of no values has no writers and no writers' barrier: ``merge_index`` commits an index
listing no tensor. A value saved as a slice of a larger tensor (the save's ``slices``) writes
its blocks at their place in that tensor. Every distinct block of a saved value is written
once, by the lowest device id that holds it (a replicated value by device 0); a value listed
in the save's ``as_bf16`` is written through an ``astype`` to bfloat16 (float32 only). The
checkpoint ops take their operands without pending reductions: propagate-layouts has already
put the relayout that applies them before the ``save``, and insert-collectives plans it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dtensor_compiler.errors import PassError
from dtensor_compiler.ir import geometry, slice_spec
from dtensor_compiler.ir.builder import Builder
from dtensor_compiler.ir.core import Function, Level, Module, Operation, Value
from dtensor_compiler.ir.mesh_shape import MeshShape
from dtensor_compiler.ir.opdef import InferContext
from dtensor_compiler.ir.ops import checkpoint
from dtensor_compiler.ir.reasons import Writes
from dtensor_compiler.ir.types import TensorType, numpy_dtype
from dtensor_compiler.pass_manager import ModulePass, PassContext, register_pass


@register_pass
@dataclass(frozen=True)
class ExpandCheckpointsPass(ModulePass):
    """Expand each ``save`` into ``save_shard`` writers, barriers and ``merge_index``."""

    name = "expand-checkpoints"
    requires = frozenset({Level.GLOBAL})

    def apply(self, module: Module, ctx: PassContext) -> None:
        infer = InferContext(module.mesh, module.level)
        for func in module.functions:
            for op in [op for op in func.ops if op.name == checkpoint.SAVE.name]:
                _expand(func, op, module.mesh, infer)


def writer_plan(types: list[TensorType], mesh: MeshShape) -> dict[int, list[int]]:
    """Which device writes which values: device id -> the positions of the values it is the
    lowest device id to hold a distinct block of. Empty blocks (the trailing blocks of an
    uneven dim) are not written, unless the tensor itself is empty."""
    plan: dict[int, list[int]] = {}
    for i, t in enumerate(types):
        assert t.sharding is not None
        seen: set[tuple[int, ...]] = set()
        for device in range(mesh.num_devices):
            start, size = geometry.device_block(t.shape, t.sharding.dims, mesh,
                                                geometry.device_coords(device, mesh))
            if geometry.is_empty_block(t.shape, size):
                continue
            if start not in seen:
                seen.add(start)
                plan.setdefault(device, []).append(i)
    return dict(sorted(plan.items()))


def _expand(func: Function, op: Operation, mesh: MeshShape, infer: InferContext) -> None:
    names = op.attrs["names"]
    prefix = op.attrs["prefix"]
    bf16 = op.attrs["as_bf16"]
    assert isinstance(names, tuple) and isinstance(prefix, str) and isinstance(bf16, tuple)
    slices = op.attrs["slices"] or ("",) * len(names)
    assert isinstance(slices, tuple)
    for v, name in zip(op.operands, names):
        if v.type.sharding is None:
            raise PassError(f"expand-checkpoints: the value saved as {name!r} has no layout; "
                            "run propagate-layouts first")
    b = Builder(func, infer, before=op)
    stored: list[Value] = []
    for v, name in zip(op.operands, names):
        if name in bf16 and v.type.dtype == "f32":
            sharding = v.type.sharding
            assert sharding is not None
            v = b.create("astype", [v], declared=TensorType("bf16", v.type.shape,
                                                            sharding.without_partial()),
                         loc=op.loc)
        stored.append(v)
    plan = writer_plan([v.type for v in stored], mesh)
    for device, positions in plan.items():
        coords = geometry.device_coords(device, mesh)
        written, nbytes = [], 0
        for i in positions:
            t = stored[i].type
            assert t.sharding is not None
            start, size = geometry.device_block(t.shape, t.sharding.dims, mesh, coords)
            full, offset = slice_spec.placement(slices[i], t.shape)
            box = "" if size == full else "[" + ", ".join(
                f"{a + o}:{a + o + n}" for a, o, n in zip(start, offset, size)) + "]"
            written.append((names[i], box))
            nbytes += math.prod(size) * numpy_dtype(t.dtype).itemsize
        attrs: dict[str, object] = {"device": device,
                                    "names": tuple(names[i] for i in positions),
                                    "prefix": prefix}
        if op.attrs["slices"]:
            attrs["slices"] = tuple(slices[i] for i in positions)
        b.create_op("save_shard", [stored[i] for i in positions], attrs, loc=op.loc,
                    why=Writes(device, tuple(written), nbytes))
    if plan:  # (a save of nothing has no writers to wait for: its index lists no tensor)
        b.create_op("barrier", [], {"name": "save_shard"}, loc=op.loc)
    merge: dict[str, object] = {"names": names, "prefix": prefix, "writers": tuple(plan)}
    if op.attrs["slices"]:
        merge["slices"] = slices
    b.create_op("merge_index", list(op.operands), merge, loc=op.loc)
    b.create_op("barrier", [], {"name": "merge_index"}, loc=op.loc)
    func.erase(op)
