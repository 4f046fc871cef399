"""Save and restore as programs: the IR a checkpoint runs, lowered like any compiled function.

A save of tensors ``w`` and ``b`` to ``ck`` starts as

```
func @save(%w: f32[8,16] @ {dp, -}, %b: f32[16] @ {-}) {
  save %w, %b {names = [w, b], prefix = "ck"}
  return
}
```

and runs through `SAVE_PIPELINE`: propagate-layouts asks for the pending reductions of the
saved values to be applied, expand-checkpoints makes the writers, barriers and index commit,
insert-collectives plans the reductions, localize makes it per-device. A
restore is a ``restore_shard`` per tensor in the layout it is restored to (each device reads
just its block, from whatever stored slices overlap it), then an ``astype`` back to float32
for a value saved as bfloat16, and a ``barrier`` at the end, where every process learns
whether any failed to read. Where the layout repeats a block on several devices, reading
it once per group and gathering it can cost less than every device reading it (`read_plan`
decides by the cost model's storage bandwidth and the all_gather's time); then the restore
reads a finer layout and a relayout, planned into an all_gather, follows.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from dtensor_compiler.api import backend_for
from dtensor_compiler.compile import Lowered, lower_module
from dtensor_compiler.cost import DEFAULT_COST_MODEL, CostModel
from dtensor_compiler.dtensor import DTensor
from dtensor_compiler.explain import format_bytes, format_table
from dtensor_compiler.ir import geometry, opdef
from dtensor_compiler.ir.builder import Builder
from dtensor_compiler.ir.core import Function, Level, Module, Value
from dtensor_compiler.ir.mesh_shape import MeshShape
from dtensor_compiler.ir.opdef import InferContext
from dtensor_compiler.ir.reasons import SharedRead, Writes
from dtensor_compiler.ir.sharding import Sharding
from dtensor_compiler.ir.types import TensorType, dtype_name, numpy_dtype
from dtensor_compiler.layout import Layout
from dtensor_compiler.mesh import Mesh
from dtensor_compiler.pass_manager import PassManager
from dtensor_compiler.runtime.backends import get_backend

SAVE_PIPELINE = "propagate-layouts,expand-checkpoints,insert-collectives,localize"
RESTORE_PIPELINE = "insert-collectives,localize"
_NOT_IDENT = re.compile(r"[^A-Za-z0-9_]")


@dataclass(frozen=True)
class SaveEntry:
    """One tensor of a save: its name, the value, the box of the saved tensor the value is
    (``""``: all of it, else the `sharded_save` slice grammar) and whether a float32 value
    is stored as bfloat16."""

    name: str
    value: DTensor
    slice: str = ""
    as_bf16: bool = False


@dataclass(frozen=True)
class RestoreEntry:
    """One tensor of a restore: its name, the dtype and stored dtype, global shape and the
    layout it is restored into."""

    name: str
    dtype: str
    stored_dtype: str
    shape: tuple[int, ...]
    layout: Layout


class CheckpointProgram(Lowered):
    """A planned save or restore: `ir()`, `stages`, `collectives()`, and `explain()` with the
    bytes each writer writes."""

    def writers(self) -> list[Writes]:
        """What each ``save_shard`` writes, in program order."""
        return [op.why for op in self.module.main.ops if isinstance(op.why, Writes)]

    def explain(self) -> str:
        """The table of writers (device, what it writes, bytes) and its total, then the
        table of collectives."""
        writers = self.writers()
        if not writers:
            return super().explain()
        rows = [(str(w.device), ", ".join(n + box for n, box in w.slices),
                 format_bytes(w.nbytes)) for w in writers]
        total = sum(w.nbytes for w in writers)
        return (format_table(("device", "writes", "bytes"), rows)
                + f"total: {len(writers)} writers, {format_bytes(total)}\n"
                + super().explain())


def _hint(name: str) -> str:
    hint = _NOT_IDENT.sub("_", name)
    return hint if hint[:1].isalpha() else "t_" + hint


def lower_save(mesh: Mesh, prefix: str, entries: Sequence[SaveEntry], *,
               verify: bool = False) -> CheckpointProgram:
    """The planned program that saves `entries` as the checkpoint `prefix`."""
    shape = mesh.mesh_shape()
    hints = [_hint(e.name) for e in entries]
    args = [Value(TensorType(dtype_name(e.value.dtype), e.value.shape,
                             e.value.layout.sharding), name_hint=hint)
            for e, hint in zip(entries, hints)]
    func = Function("save", args)
    module = Module(shape, [func], level=Level.GLOBAL)
    attrs: dict[str, object] = {"names": tuple(e.name for e in entries), "prefix": prefix}
    if any(e.slice for e in entries):
        attrs["slices"] = tuple(e.slice for e in entries)
    bf16 = tuple(e.name for e in entries if e.as_bf16 and e.value.dtype.name == "float32")
    if bf16:
        attrs["as_bf16"] = bf16
    Builder(func, InferContext(shape)).create_op("save", args, attrs)
    func.set_results([])
    low = lower_module(mesh, module, hints,
                       PassManager.parse(SAVE_PIPELINE).passes, verify=verify,
                       backend=get_backend(backend_for(mesh)), lowered=CheckpointProgram,
                       input_stage="input")
    assert isinstance(low, CheckpointProgram)
    return low


def read_plan(e: RestoreEntry, mesh: MeshShape, cost: CostModel
              ) -> tuple[Sharding, SharedRead | None]:
    """The layout to read `e` in: its target, or, when the target repeats each block over
    some mesh dims, the target with one tensor dim also split over those dims (then gathered)
    if reading 1/k as much from storage plus the all_gather costs less."""
    target = e.layout.sharding.without_partial()
    spare = tuple(m for m in mesh.names if m not in target.used_mesh_dims())
    if not spare or not e.shape:
        return target, None
    block = math.prod(target.local_shape(e.shape, mesh)) * numpy_dtype(e.stored_dtype).itemsize
    direct = cost.read_time(block * mesh.num_devices)
    for d in range(len(e.shape)):
        dims = target.dims[:d] + (target.dims[d] + spare,) + target.dims[d + 1:]
        candidate = target.with_dims(dims)
        if not geometry.changes_align(e.shape, candidate.dims, target.dims, mesh):
            continue
        readers = mesh.group_size(spare)
        gather = opdef.lookup("all_gather").collective
        assert gather is not None
        shared = (cost.read_time(block * mesh.num_devices // readers)
                  + cost.collective_time(gather, spare, mesh, block // readers, block))
        if shared < direct:
            return candidate, SharedRead(e.name, readers, spare, shared, direct)
        break
    return target, None


def lower_restore(mesh: Mesh, prefix: str, entries: Sequence[RestoreEntry], *,
                  cost_model: CostModel = DEFAULT_COST_MODEL, verify: bool = False
                  ) -> CheckpointProgram:
    """The planned program that reads `entries` of the checkpoint `prefix` into their
    layouts."""
    shape = mesh.mesh_shape()
    func = Function("restore", [])
    module = Module(shape, [func], level=Level.GLOBAL)
    b = Builder(func, InferContext(shape))
    results = []
    for e in entries:
        target = e.layout.sharding
        read, why = read_plan(e, shape, cost_model)
        v = b.create("restore_shard", [], {"name": e.name, "prefix": prefix},
                     declared=TensorType(e.stored_dtype, e.shape, read))
        if why is not None:
            v = b.create("relayout", [v], declared=TensorType(e.stored_dtype, e.shape, target),
                         why=why)
        if e.stored_dtype != e.dtype:
            v = b.create("astype", [v], declared=TensorType(e.dtype, e.shape, target))
        results.append(v)
    b.create_op("barrier", [], {"name": "restore_shard"})  # every process has read its part
    func.set_results(results)
    low = lower_module(mesh, module, [], PassManager.parse(RESTORE_PIPELINE).passes,
                       verify=verify, backend=get_backend(backend_for(mesh)), cost_model=cost_model,
                       lowered=CheckpointProgram, input_stage="input")
    assert isinstance(low, CheckpointProgram)
    return low
