"""Kernels of the checkpoint ops (`ir/ops/checkpoint.py`) on arrays with leading mesh axes.

Each kernel finds a device's block in an array the way the simulated mesh stacks it (a mesh
axis of extent 1 is one copy for every device along it; no mesh axes is one device's own
array) and does its file work through `checkpoint_data` and `checkpoint_index`. Every
process runs every op of the program, each for the devices it holds (`ExecContext.box`):

- ``save_shard`` writes the device's data file where the device runs here, else nothing;
- ``barrier`` waits for this process's writes, then for every process (`ExecContext.barrier`:
  nothing to wait for on the simulated mesh), and raises on every process what failed on
  any, so all decide alike whether the save goes on;
- ``merge_index`` commits the index on the process that holds device 0, from the headers
  of every writer's data file (the processes must share the checkpoint's directory);
- ``restore_shard`` reads the blocks of the devices that run here, and the ``barrier`` that
  ends a restore tells every process whether any failed to read.

No kernel of a save or restore raises before the barrier that follows it: what fails is
kept for the barrier, so that a process that failed still meets the others there.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import math
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import EllipsisType

import numpy as np

from dtensor_compiler.errors import CheckpointError
from dtensor_compiler.ir import geometry, slice_spec
from dtensor_compiler.ir.attrs import int_attr, str_attr, strs_attr
from dtensor_compiler.ir.core import Module, Operation, Value
from dtensor_compiler.ir.mesh_shape import MeshShape
from dtensor_compiler.ir.ops import checkpoint
from dtensor_compiler.ir.sharding import Sharding
from dtensor_compiler.ir.types import numpy_dtype
from dtensor_compiler.runtime.box import Box as DeviceBox
from dtensor_compiler.runtime.checkpoint_data import (
    Piece,
    read_box,
    read_stored_slices,
    write_data_file,
)
from dtensor_compiler.runtime.checkpoint_index import (
    Box,
    Index,
    StoredSlice,
    TensorRecord,
    commit,
    data_file_name,
    load_index,
    next_generation,
    stored_dtype,
)
from dtensor_compiler.runtime.executor import ExecContext, KernelFn
from dtensor_compiler.runtime.kernels_numpy import NUMPY_KERNELS
from dtensor_compiler.runtime.stacked import copy_index, trim_to

kernel = NUMPY_KERNELS.register
_IO_THREADS = 4
_IO = ThreadPoolExecutor(_IO_THREADS, thread_name_prefix="dtc-checkpoint-io")
PROGRAMS = threading.RLock()
"""Held by the executor while a program with checkpoint ops runs: one save or restore at a
time in this process, whichever thread runs it (the API's writer thread, or a compiled
function's ``dtc.save``), so two saves never pick the same generation of a prefix and a
restore never sees a commit half-way."""


def program_lock(module: Module) -> contextlib.AbstractContextManager[object]:
    """What an executor holds while it runs `module`: for a module with checkpoint ops,
    `PROGRAMS`, and the end of whatever save or restore the run left in flight (one that
    raised half-way); else nothing."""
    if any(op.name in _CHECKPOINT_OPS for f in module.functions for op in f.ops):
        return _CheckpointRun()
    return contextlib.nullcontext()


class _CheckpointRun:
    """One run of a program with checkpoint ops at a time in this process; afterwards, no
    save or restore of it is left in flight in this thread."""

    def __enter__(self) -> None:
        PROGRAMS.acquire()

    def __exit__(self, *exc: object) -> None:
        _SAVES.save = None
        _SAVES.restore = None
        PROGRAMS.release()


_CHECKPOINT_OPS = frozenset(d.name for d in (checkpoint.SAVE_SHARD, checkpoint.MERGE_INDEX,
                                             checkpoint.RESTORE_SHARD))


@dataclass
class _Save:
    """The save in flight in one program-running thread, from its first ``save_shard`` to
    the barrier after ``merge_index``: which save it is, the writes handed to the pool since
    the last barrier, and what failed here (raised at the next barrier, once every process
    knows)."""

    prefix: str
    generation: int
    attempt: int
    """How many saves of this prefix and generation this process began before (a save that
    failed is tried again at the same generation)."""
    pending: list[Future[None]] = field(default_factory=list)
    failure: BaseException | None = None

    def key(self, barrier: str) -> str:
        return (f"checkpoint {self.prefix} generation {self.generation} attempt "
                f"{self.attempt}: {barrier}")


_SAVES = threading.local()
"""Per program-running thread, `.save`: the `_Save` in flight, or None; `.restore`: the
`_Restore` in flight, or None."""
_ATTEMPTS: dict[tuple[str, int], int] = {}
_RESTORES: dict[str, int] = {}
"""Restores of each prefix this process began."""


@dataclass
class _Restore:
    """The restore in flight in one program-running thread, from its first ``restore_shard``
    to its ``barrier``: which restore it is (the processes restore in the same order), and
    what failed here (raised at the barrier, once every process knows)."""

    prefix: str
    number: int
    failure: BaseException | None = None


def _restore_in_flight(prefix: str) -> _Restore:
    restore: _Restore | None = getattr(_SAVES, "restore", None)
    if restore is None:
        number = _RESTORES.get(prefix, 0)
        _RESTORES[prefix] = number + 1
        restore = _SAVES.restore = _Restore(prefix, number)
    return restore


def _raise_agreed(what: str, mine: BaseException | None, failed: dict[int, str],
                  ending: str) -> None:
    """Raise what failed here, else a CheckpointError naming the processes that failed."""
    if mine is not None:
        raise mine
    if failed:
        who = sorted(failed)
        raise CheckpointError(f"the {what} failed on client{'s' if len(who) > 1 else ''} "
                              f"{', '.join(map(str, who))} ({failed[who[0]]}); {ending}")


def _said(e: BaseException | None) -> str | None:
    return None if e is None else f"{type(e).__name__}: {e}"


def _save_in_flight(prefix: str) -> _Save:
    save: _Save | None = getattr(_SAVES, "save", None)
    if save is None:
        generation = next_generation(prefix)
        attempt = _ATTEMPTS.get((prefix, generation), 0)
        _ATTEMPTS[(prefix, generation)] = attempt + 1
        save = _SAVES.save = _Save(prefix, generation, attempt)
    return save


def _layout(value: Value) -> Sharding:
    sharding = value.type.sharding
    assert sharding is not None, "a localized value has a layout"
    return sharding


def _global_shape(value: Value, mesh: MeshShape) -> tuple[int, ...]:
    return value.type.global_shape(mesh)


def _slices(op: Operation) -> tuple[str, ...]:
    return strs_attr(op.attrs, "slices") or ("",) * len(op.operands)


def _contiguous(x: np.ndarray) -> np.ndarray:
    """`x` C-contiguous, 0-d kept 0-d (np.ascontiguousarray makes it 1-d)."""
    return x if x.flags.c_contiguous else x.copy(order="C")


@kernel(checkpoint.SAVE_SHARD)
def _save_shard(op: Operation, ctx: ExecContext) -> KernelFn:
    device = int_attr(op.attrs, "device")
    names, prefix = strs_attr(op.attrs, "names"), str_attr(op.attrs, "prefix")
    coords = geometry.device_coords(device, ctx.mesh)
    local = ctx.box.coords_of(device)
    boxes = []
    for v, text in zip(op.operands, _slices(op)):
        shape = _global_shape(v, ctx.mesh)
        start, size = geometry.device_block(shape, _layout(v).dims, ctx.mesh, coords)
        _, offset = slice_spec.placement(text, shape)
        boxes.append(Box(tuple(a + o for a, o in zip(start, offset)), size))

    def run(*xs: np.ndarray) -> None:
        save = _save_in_flight(prefix)
        if local is None or save.failure is not None:
            return  # another process holds the device, or the save has failed here
        at = local[:ctx.mesh_axes]
        try:
            pieces = [Piece(name, box, _contiguous(trim_to(x[copy_index(at, x.shape)],
                                                           box.shape)))
                      for name, box, x in zip(names, boxes, xs)]
            path = Path(prefix).parent / data_file_name(prefix, save.generation, device)
            save.pending.append(_IO.submit(contextvars.copy_context().run, write_data_file,
                                           path, pieces, device))
        except Exception as e:  # raised at the barrier, once every process knows
            save.failure = e
    return run


@kernel(checkpoint.BARRIER)
def _barrier(op: Operation, ctx: ExecContext) -> KernelFn:
    """Wait for this process's writes, then for every process; raise, on every process,
    what failed on any (so all of them decide the same about the commit). The barrier after
    ``merge_index`` ends the save."""
    name = str_attr(op.attrs, "name")
    if name == checkpoint.RESTORE_SHARD.name:
        return _restore_barrier(ctx)
    ends = name == checkpoint.MERGE_INDEX.name

    def run() -> None:
        save: _Save | None = getattr(_SAVES, "save", None)
        assert save is not None, "a checkpoint barrier follows the save's writers"
        pending, save.pending = save.pending, []
        errors = [e for e in (f.exception() for f in pending) if e is not None]
        mine = save.failure or (errors[0] if errors else None)
        failed = ctx.barrier(save.key(name), _said(mine))
        if ends:
            _SAVES.save = None  # (a raise ends the program's run, which ends the save too)
        _raise_agreed(f"save of {save.prefix}", mine, failed,
                      "its commit failed" if ends else "it was not committed")
    return run


def _restore_barrier(ctx: ExecContext) -> KernelFn:
    """The end of a restore: every process learns whether any failed to read its part."""
    def run() -> None:
        restore: _Restore | None = getattr(_SAVES, "restore", None)
        assert restore is not None, "a restore's barrier follows its reads"
        _SAVES.restore = None
        failed = ctx.barrier(f"restore {restore.prefix} #{restore.number}",
                             _said(restore.failure))
        _raise_agreed(f"restore of {restore.prefix}", restore.failure, failed,
                      "nothing was restored")
    return run


@kernel(checkpoint.MERGE_INDEX)
def _merge_index(op: Operation, ctx: ExecContext) -> KernelFn:
    """On the process that holds device 0: read the headers of the writers' data files and
    commit the index (a failure is raised at the barrier after it)."""
    names, prefix = strs_attr(op.attrs, "names"), str_attr(op.attrs, "prefix")
    writers = op.attrs["writers"]
    assert isinstance(writers, tuple)
    mesh = ctx.mesh
    merges = ctx.box.coords_of(0) is not None
    saved: dict[str, tuple[tuple[int, ...], str, str, int]] = {}
    for name, v, text in zip(names, op.operands, _slices(op)):
        shape = _global_shape(v, mesh)
        full, _ = slice_spec.placement(text, shape)
        volume = math.prod(shape) + (saved[name][3] if name in saved else 0)
        source = numpy_dtype(v.type.dtype).name
        if name in saved and saved[name][:2] != (full, source):
            raise CheckpointError(f"the slices saved as {name!r} disagree on its shape or "
                                  "dtype")
        saved[name] = (full, source, _layout(v).text(), volume)

    def commit_index(generation: int) -> None:
        directory = Path(prefix).parent
        found: dict[str, list[StoredSlice]] = {name: [] for name in names}
        dtypes: dict[str, str] = {}
        files: dict[str, int] = {}
        for w in writers:
            path = directory / data_file_name(prefix, generation, w)
            if ctx.box.coords_of(w) is None and not path.exists():
                raise CheckpointError(f"data file {path} of device {w}, which another "
                                      "process wrote, is not there: the processes must save "
                                      "into a directory they share")
            for name, stored, dtype in read_stored_slices(path):
                if name not in found:
                    raise CheckpointError(f"{path} holds {name!r}, which this save does not")
                found[name].append(stored)
                dtypes[name] = dtype
            files[path.name] = path.stat().st_size
        tensors = {}
        for name, (shape, source, layout, volume) in saved.items():
            slices = sorted(found[name], key=lambda s: s.box.start)
            if sum(math.prod(s.box.shape) for s in slices) != volume:
                raise CheckpointError(f"the data files of {prefix} do not hold all of {name!r}")
            stored_as = dtypes.get(name, source)
            tensors[name] = TensorRecord(stored_as, shape, layout, mesh.text(),
                                         None if stored_as == source else source,
                                         tuple(slices))
        commit(prefix, Index(generation, tensors, files))

    def run(*xs: np.ndarray) -> None:
        save = _save_in_flight(prefix)
        if merges:
            try:
                commit_index(save.generation)
            except Exception as e:  # raised at the barrier, once every process knows
                save.failure = e
    return run


@kernel(checkpoint.RESTORE_SHARD)
def _restore_shard(op: Operation, ctx: ExecContext) -> KernelFn:
    """Read the block of each device that runs here (once per distinct block)."""
    name, prefix = str_attr(op.attrs, "name"), str_attr(op.attrs, "prefix")
    mesh = ctx.mesh
    here = ctx.box
    result = op.results[0]
    sharding = _layout(result)
    shape = _global_shape(result, mesh)
    dtype = numpy_dtype(result.type.dtype)
    used = set(sharding.sharded_mesh_dims())
    extents = tuple(e if m in used else 1
                    for m, e in zip(mesh.names, here.extent))[:ctx.mesh_axes]

    def run() -> np.ndarray:
        restore = _restore_in_flight(prefix)
        try:
            return read_all()
        except Exception as e:  # raised at the barrier, once every process knows
            restore.failure = restore.failure or e
            return np.zeros(extents + result.type.shape, dtype=dtype)

    def read_all() -> np.ndarray:
        record = load_index(prefix).tensors.get(name)
        if record is None:
            raise CheckpointError(f"{prefix} has no tensor {name!r}")
        if record.shape != shape or stored_dtype(record.dtype) != dtype:
            raise CheckpointError(f"{name}: {prefix} holds {record.dtype}{list(record.shape)}, "
                                  f"the program reads {dtype}{list(shape)}")
        out = np.empty(extents + result.type.shape, dtype=dtype)
        directory = Path(prefix).parent
        context = contextvars.copy_context()

        def read(index: tuple[int, ...]) -> None:
            local = index + (0,) * (len(mesh.dims) - len(index))
            coords = tuple(s + i for s, i in zip(here.start, local))
            start, size = geometry.device_block(shape, sharding.dims, mesh, coords)
            if geometry.is_empty_block(shape, size):
                return  # an empty block: all padding
            block: tuple[int | EllipsisType, ...] = (*index, Ellipsis)  # a view, 0-d too
            read_box(directory, name, record, Box(start, size), _holders(coords, used, here),
                     into=trim_to(out[block], size))

        blocks = list(itertools.product(*(range(e) for e in extents)))
        for future in [_IO.submit(context.copy().run, read, b) for b in blocks]:
            future.result()
        return out
    return run


def _holders(coords: tuple[int, ...], used: set[str], here: DeviceBox) -> list[int]:
    """The devices running here that hold the block of the device at `coords` (equal
    along `used`)."""
    ranges = [range(s, s + e) if m not in used else (c,)
              for m, s, e, c in zip(here.mesh.names, here.start, here.extent, coords)]
    return [int(np.ravel_multi_index(point, here.mesh.sizes))
            for point in itertools.product(*ranges)]
