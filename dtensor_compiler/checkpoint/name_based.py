"""Saving and restoring tensors by name: `name_based_save`, `sharded_save`,
`name_based_restore`, `lower_name_based_save` and `enable_save_as_bf16`.

A checkpoint prefix is a path without a suffix (``/ckpt/model-3``); saving makes its
directory if needed. The files are described in `runtime/checkpoint_index.py`. Saving a
prefix again replaces that checkpoint as one step: the new files go beside the old ones and
the old go once the new index is committed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from dtensor_compiler import tracing
from dtensor_compiler.api import backend_for, relayout
from dtensor_compiler.checkpoint import progress, writer
from dtensor_compiler.checkpoint.programs import (
    CheckpointProgram,
    RestoreEntry,
    SaveEntry,
    lower_restore,
    lower_save,
)
from dtensor_compiler.dtensor import DistributedValue, DTensor
from dtensor_compiler.errors import CheckpointError, LayoutError, SliceSpecError, TraceError
from dtensor_compiler.ir.slice_spec import SliceSpec, placement
from dtensor_compiler.ir.types import dtype_name, numpy_dtype
from dtensor_compiler.layout import Layout
from dtensor_compiler.mesh import Mesh
from dtensor_compiler.runtime.checkpoint_data import SAFETENSORS_DTYPES
from dtensor_compiler.runtime.checkpoint_index import Box, load_index, stored_dtype
from dtensor_compiler.tracing.location import user_location
from dtensor_compiler.variable import DVariable

PathLike = str | os.PathLike[str]


def as_prefix(prefix: PathLike, what: str) -> str:
    """`prefix` as a string; TypeError or ValueError (naming `what`) for a bad one."""
    if not isinstance(prefix, (str, os.PathLike)):
        raise TypeError(f"{what}: the checkpoint prefix must be a path, got "
                        f"{type(prefix).__name__}")
    text = os.fspath(prefix)
    if not text or text.endswith(("/", os.sep)) or os.path.basename(text) in (".", ".."):
        raise ValueError(f"{what}: the checkpoint prefix {text!r} names a directory; give a "
                         "path inside it, like 'ckpt/model'")
    return text


def _tensor(name: object, value: object, mesh: Mesh, what: str) -> DTensor:
    if not isinstance(name, str) or not name:
        raise TypeError(f"{what}: tensor names must be non-empty strings, got {name!r}")
    if not isinstance(value, DistributedValue):
        raise TypeError(f"{what}: {name!r} must be a DTensor or DVariable, got "
                        f"{type(value).__name__} (copy_to_mesh it first)")
    tensor = value.as_dtensor()
    if tensor.mesh != mesh:
        raise LayoutError(f"{what}: {name!r} is on {tensor.mesh.short_text()}, not on "
                          f"{mesh.short_text()}")
    return tensor


def save_entries(mesh: Mesh, tensors: Mapping[str, object], what: str) -> list[SaveEntry]:
    if not isinstance(tensors, Mapping):
        raise TypeError(f"{what} expects a dict of name -> DTensor, got "
                        f"{type(tensors).__name__}")
    return [SaveEntry(name, _tensor(name, value, mesh, what),
                      as_bf16=isinstance(value, DVariable) and value.save_as_bf16)
            for name, value in tensors.items()]


def _data_bytes(entries: Sequence[SaveEntry]) -> int:
    return sum(math.prod(e.value.shape) * e.value.dtype.itemsize for e in entries)


def run_save(mesh: Mesh, prefix: str, entries: Sequence[SaveEntry], blocking: bool,
             progress_bar: bool | None, then: Callable[[], None] | None = None
             ) -> writer.SaveHandle | None:
    """Plan the save now; write it (in the writer thread, behind earlier saves), then call
    `then` once it is committed.

    On a mesh several clients hold, what the clients must do in the same order happens
    here, in the caller's thread, in order with its other programs: the pending reductions
    of the values are applied (collectives) and the plan is compared with the other
    clients'. The writer thread only writes, and meets the other clients at the save's
    barriers (keyed by the checkpoint, not by order)."""
    for e in entries:  # (refused here, not in the writer thread: `result()` comes later)
        stored = "bfloat16" if e.as_bf16 and e.value.dtype.name == "float32" else e.value.dtype.name
        if stored not in SAFETENSORS_DTYPES:
            raise CheckpointError(f"{e.name}: dtype {stored} cannot be stored in safetensors, "
                                  "which has no code for it")
    if backend_for(mesh) == "distributed":
        entries = [replace(e, value=_settled(e.value)) for e in entries]
    program = lower_save(mesh, prefix, entries)
    program.prepare()
    values = [e.value for e in entries]
    nbytes = _data_bytes(entries)
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)

    def run() -> None:
        with progress.bar(f"saving {prefix}", nbytes, progress_bar):
            program.run(*values)
        if then is not None:
            then()

    handle = writer.submit(prefix, run)
    if blocking:
        handle.result()
        return None
    return handle


def _settled(value: DTensor) -> DTensor:
    """`value` with its pending reductions applied."""
    sharding = value.layout.sharding
    if not sharding.is_partial:
        return value
    settled = relayout(value, Layout.from_sharding(sharding.without_partial(), value.mesh))
    assert isinstance(settled, DTensor)
    return settled


def name_based_save(mesh: Mesh, checkpoint_prefix: PathLike,
                    name_tensor_dict: Mapping[str, DistributedValue], *,
                    blocking: bool = True, progress: bool | None = None
                    ) -> writer.SaveHandle | None:
    """Save the DTensors of `name_tensor_dict` (all on `mesh`) under their names as the
    checkpoint `checkpoint_prefix`.

    `blocking=False` returns a `SaveHandle` as soon as the save is planned; the files are
    written in the background. `progress`: see `checkpoint.progress`.
    """
    prefix = as_prefix(checkpoint_prefix, "name_based_save")
    entries = save_entries(mesh, name_tensor_dict, "name_based_save")
    return run_save(mesh, prefix, entries, blocking, progress)


def save(file_prefix: PathLike, tensors: Mapping[str, object], *, blocking: bool = True
         ) -> writer.SaveHandle | None:
    """Save `tensors` (name -> value) as the checkpoint `file_prefix`.

    Inside a compiled function the values are that function's arrays, and the save becomes
    ``save`` ops of its program, run after the values are computed, each time the function
    runs (the prefix is fixed when the function is traced). Outside, the values are DTensors
    or DVariables on one mesh, and this is `name_based_save` on that mesh.
    """
    prefix = as_prefix(file_prefix, "dtc.save")
    if not isinstance(tensors, Mapping) or not tensors:
        raise TypeError("dtc.save expects a non-empty dict of name -> value")
    values = list(tensors.values())
    if any(tracing.is_traced(v) for v in values):
        traced = {}
        for name, v in tensors.items():
            if not isinstance(name, str) or not name:
                raise TraceError(f"dtc.save: tensor names must be non-empty strings, got "
                                 f"{name!r}", user_location())
            if not tracing.is_traced(v):
                raise TraceError(f"dtc.save inside a compiled function: {name!r} is a "
                                 f"{type(v).__name__}, not an array of the function",
                                 user_location())
            traced[name] = v
        if not blocking:
            raise TraceError("dtc.save inside a compiled function is part of the program; "
                             "blocking=False is for saves outside one", user_location())
        tracing.traced_save(prefix, traced)
        return None
    first = values[0]
    if not isinstance(first, DistributedValue):
        raise TypeError(f"dtc.save: {next(iter(tensors))!r} must be a DTensor or DVariable "
                        f"outside a compiled function, got {type(first).__name__}")
    return name_based_save(first.mesh, prefix, tensors, blocking=blocking)  # type: ignore[arg-type]


def lower_name_based_save(mesh: Mesh, checkpoint_prefix: PathLike,
                          name_tensor_dict: Mapping[str, DistributedValue]
                          ) -> CheckpointProgram:
    """The program `name_based_save` would run, planned and not run: nothing is written."""
    prefix = as_prefix(checkpoint_prefix, "lower_name_based_save")
    return lower_save(mesh, prefix, save_entries(mesh, name_tensor_dict,
                                                 "lower_name_based_save"))


def sharded_save(mesh: Mesh, file_prefix: PathLike, tensor_names: Sequence[str],
                 shape_and_slices: Sequence[str], tensors: Sequence[DistributedValue], *,
                 blocking: bool = True, progress: bool | None = None
                 ) -> writer.SaveHandle | None:
    """Save `tensors` under `tensor_names`, each the box `shape_and_slices` gives of its
    tensor: ``""`` for all of it, or the full shape then one extent per dim
    (``"4 8 0,2:-"``: rows 0..1 of a 4x8 tensor; see `ir/slice_spec.py`). A name may repeat
    with disjoint slices; the parts of a tensor no slice covers are absent from the
    checkpoint, and restoring them is a `CheckpointError`.
    """
    prefix = as_prefix(file_prefix, "sharded_save")
    names, slices, values = list(tensor_names), list(shape_and_slices), list(tensors)
    if not len(names) == len(slices) == len(values):
        raise ValueError(f"sharded_save: {len(names)} names, {len(slices)} shape_and_slices "
                         f"and {len(values)} tensors; give one of each per tensor")
    entries = []
    for name, text, value in zip(names, slices, values):
        tensor = _tensor(name, value, mesh, "sharded_save")
        placement(text, tensor.shape)
        entries.append(SaveEntry(name, tensor, text, isinstance(value, DVariable)
                                 and value.save_as_bf16))
    _check_disjoint(entries)
    for e in entries:
        if any(o.name == e.name and o.as_bf16 != e.as_bf16 for o in entries):
            raise ValueError(f"sharded_save: some slices of {e.name!r} are saved as bfloat16 "
                             "and some are not; a tensor is stored in one dtype")
    return run_save(mesh, prefix, entries, blocking, progress)


def _check_disjoint(entries: Sequence[SaveEntry]) -> None:
    """SliceSpecError for two slices of one name that overlap or disagree on the shape."""
    boxes: dict[str, list[SliceSpec]] = {}
    for e in entries:
        spec = SliceSpec.parse(e.slice) or SliceSpec(e.value.shape, (0,) * e.value.ndim,
                                                     e.value.shape)
        for other in boxes.get(e.name, []):
            if other.full_shape != spec.full_shape:
                raise SliceSpecError(f"sharded_save: {e.name!r} is saved with full shapes "
                                     f"{list(other.full_shape)} and {list(spec.full_shape)}")
            if Box(spec.start, spec.shape).overlaps(Box(other.start, other.shape)):
                raise SliceSpecError(f"sharded_save: the slices {other.text()!r} and "
                                     f"{spec.text()!r} of {e.name!r} overlap")
        boxes.setdefault(e.name, []).append(spec)


def restore_entries(prefix: str, templates: Mapping[str, DTensor]) -> list[RestoreEntry]:
    """What to read for each template; one CheckpointError listing every tensor that is
    missing from the checkpoint or mismatches its template."""
    index = load_index(prefix)
    problems, entries = [], []
    for name, t in templates.items():
        record = index.tensors.get(name)
        if record is None:
            problems.append(f"{name}: not in the checkpoint")
            continue
        stored = dtype_name(stored_dtype(record.dtype))
        wanted = {stored} | ({dtype_name(stored_dtype(record.saved_from))}
                             if record.saved_from else set())
        have = dtype_name(t.dtype)
        if record.shape != t.shape:
            problems.append(f"{name}: the checkpoint holds shape {list(record.shape)}, the "
                            f"target has {list(t.shape)}")
        elif have not in wanted:
            problems.append(f"{name}: the checkpoint holds {' or '.join(sorted(wanted))}, "
                            f"the target is {have}")
        else:
            entries.append(RestoreEntry(name, have, stored, t.shape,
                                        Layout.from_sharding(t.layout.sharding.without_partial(),
                                                             t.mesh)))
    if problems:
        raise CheckpointError(f"cannot restore {prefix}: {len(problems)} of "
                              f"{len(templates)} tensors do not match:\n  "
                              + "\n  ".join(problems))
    return entries


def run_restore(mesh: Mesh, prefix: str, templates: Mapping[str, DTensor],
                progress_bar: bool | None) -> dict[str, DTensor]:
    writer.wait_for_saves()
    entries = restore_entries(prefix, templates)
    if not entries:
        return {}
    program = lower_restore(mesh, prefix, entries)
    nbytes = sum(math.prod(e.shape) * numpy_dtype(e.stored_dtype).itemsize for e in entries)
    with progress.bar(f"restoring {prefix}", nbytes, progress_bar):
        outs = program.run()
    results = outs if isinstance(outs, tuple) else (outs,)
    restored = {}
    for e, out in zip(entries, results):
        assert isinstance(out, DTensor)
        layout = templates[e.name].layout
        if layout.sharding.is_partial:
            moved = relayout(out, layout)
            assert isinstance(moved, DTensor)
            out = moved
        restored[e.name] = out
    return restored


def name_based_restore(mesh: Mesh, checkpoint_prefix: PathLike,
                       name_tensor_dict: Mapping[str, DistributedValue], *,
                       progress: bool | None = None) -> dict[str, DTensor]:
    """The tensors of the checkpoint named by `name_tensor_dict`'s keys, each restored with
    the shape, dtype and layout of its value there (a DTensor or DVariable on `mesh`, which is
    not changed). Works whatever mesh and layouts the checkpoint was saved with. A float32
    saved as bfloat16 comes back as float32 for a float32 template."""
    prefix = as_prefix(checkpoint_prefix, "name_based_restore")
    if not isinstance(name_tensor_dict, Mapping):
        raise TypeError("name_based_restore expects a dict of name -> DTensor, got "
                        f"{type(name_tensor_dict).__name__}")
    templates = {name: _tensor(name, v, mesh, "name_based_restore")
                 for name, v in name_tensor_dict.items()}
    return run_restore(mesh, prefix, templates, progress)


def enable_save_as_bf16(variables: Sequence[DVariable]) -> None:
    """Store these float32 DVariables as bfloat16 in every later checkpoint (restored back to
    float32); other dtypes are left as they are, as in the reference. A compiled function's
    `dtc.save` sees arrays, not the variables they came from: it stores them as they are."""
    for v in variables:
        if not isinstance(v, DVariable):
            raise TypeError(f"enable_save_as_bf16 expects DVariables, got {type(v).__name__}")
        if v.dtype.name == "float32":
            v.save_as_bf16 = True
