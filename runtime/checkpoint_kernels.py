"""Kernels of the checkpoint ops (`ir/ops/checkpoint.py`) on arrays with leading mesh axes.

Each kernel finds a device's block in an array the way the simulated mesh stacks it (a mesh
axis of extent 1 is one copy for every device along it; no mesh axes is one device's own
array) and does its file work through `checkpoint_data` and `checkpoint_index`. On the
simulated mesh every device is in this process, so ``barrier`` has nothing to wait for.
"""

from __future__ import annotations

import contextvars
import itertools
import math
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import EllipsisType

import numpy as np

from dtensor_compiler.errors import CheckpointError
from dtensor_compiler.ir import geometry, slice_spec
from dtensor_compiler.ir.core import Module, Operation, Value
from dtensor_compiler.ir.mesh_shape import MeshShape
from dtensor_compiler.ir.ops import checkpoint
from dtensor_compiler.ir.sharding import Sharding
from dtensor_compiler.ir.types import numpy_dtype
from dtensor_compiler.runtime.checkpoint_data import (
    Piece,
    read_box,
    read_stored_slices,
    stored_dtype,
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


def uses_checkpoints(module: Module) -> bool:
    return any(op.name in _CHECKPOINT_OPS for f in module.functions for op in f.ops)


_CHECKPOINT_OPS = frozenset(d.name for d in (checkpoint.SAVE_SHARD, checkpoint.MERGE_INDEX,
                                             checkpoint.RESTORE_SHARD))
_WRITES = threading.local()
"""Per program-running thread, `.pending`: the writes handed to the pool since its last
barrier."""


def _pending_writes() -> list[Future[None]]:
    if not hasattr(_WRITES, "pending"):
        _WRITES.pending = []
    pending: list[Future[None]] = _WRITES.pending
    return pending


def _str(op: Operation, name: str) -> str:
    value = op.attrs[name]
    assert isinstance(value, str)
    return value


def _strs(op: Operation, name: str) -> tuple[str, ...]:
    value = op.attrs[name]
    assert isinstance(value, tuple)
    return value


def _layout(value: Value) -> Sharding:
    sharding = value.type.sharding
    assert sharding is not None, "a localized value has a layout"
    return sharding


def _global_shape(value: Value, mesh: MeshShape) -> tuple[int, ...]:
    return value.type.global_shape(mesh)


def _slices(op: Operation) -> tuple[str, ...]:
    return _strs(op, "slices") or ("",) * len(op.operands)


def _device_part(x: np.ndarray, coords: tuple[int, ...], mesh_axes: int,
                 valid: tuple[int, ...]) -> np.ndarray:
    """The valid part (of shape `valid`, padding cut off) of the block one device holds of an
    array with `mesh_axes` leading mesh axes."""
    return trim_to(x[copy_index(coords[:mesh_axes], x.shape)], valid)


def _contiguous(x: np.ndarray) -> np.ndarray:
    """`x` C-contiguous, 0-d kept 0-d (np.ascontiguousarray makes it 1-d)."""
    return x if x.flags.c_contiguous else x.copy(order="C")


@kernel(checkpoint.SAVE_SHARD)
def _save_shard(op: Operation, ctx: ExecContext) -> KernelFn:
    device = op.attrs["device"]
    assert isinstance(device, int)
    names, prefix = _strs(op, "names"), _str(op, "prefix")
    coords = geometry.device_coords(device, ctx.mesh)
    boxes = []
    for v, text in zip(op.operands, _slices(op)):
        shape = _global_shape(v, ctx.mesh)
        start, size = geometry.device_block(shape, _layout(v).dims, ctx.mesh, coords)
        _, offset = slice_spec.placement(text, shape)
        boxes.append(Box(tuple(a + o for a, o in zip(start, offset)), size))

    def run(*xs: np.ndarray) -> None:
        pieces = [Piece(name, box, _contiguous(_device_part(x, coords, ctx.mesh_axes,
                                                            box.shape)))
                  for name, box, x in zip(names, boxes, xs)]
        path = Path(prefix).parent / data_file_name(prefix, next_generation(prefix), device)
        future = _IO.submit(contextvars.copy_context().run, write_data_file, path, pieces,
                            device)
        _pending_writes().append(future)
    return run


@kernel(checkpoint.BARRIER)
def _barrier(op: Operation, ctx: ExecContext) -> KernelFn:
    def run() -> None:
        pending = list(_pending_writes())
        _pending_writes().clear()
        errors = [e for e in (f.exception() for f in pending) if e is not None]
        if errors:
            raise errors[0]
    return run


@kernel(checkpoint.MERGE_INDEX)
def _merge_index(op: Operation, ctx: ExecContext) -> KernelFn:
    names, prefix = _strs(op, "names"), _str(op, "prefix")
    writers = op.attrs["writers"]
    assert isinstance(writers, tuple)
    mesh = ctx.mesh
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

    def run(*xs: np.ndarray) -> None:
        generation = next_generation(prefix)
        directory = Path(prefix).parent
        found: dict[str, list[StoredSlice]] = {name: [] for name in names}
        dtypes: dict[str, str] = {}
        files: dict[str, int] = {}
        for w in writers:
            path = directory / data_file_name(prefix, generation, w)
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
    return run


@kernel(checkpoint.RESTORE_SHARD)
def _restore_shard(op: Operation, ctx: ExecContext) -> KernelFn:
    name, prefix = _str(op, "name"), _str(op, "prefix")
    mesh = ctx.mesh
    result = op.results[0]
    sharding = _layout(result)
    shape = _global_shape(result, mesh)
    dtype = numpy_dtype(result.type.dtype)
    used = set(sharding.sharded_mesh_dims())
    extents = tuple(s if m in used else 1 for m, s in mesh.dims)[:ctx.mesh_axes]

    def run() -> np.ndarray:
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
            coords = index + (0,) * (len(mesh.dims) - len(index))
            start, size = geometry.device_block(shape, sharding.dims, mesh, coords)
            if geometry.is_empty_block(shape, size):
                return  # an empty block: all padding
            block: tuple[int | EllipsisType, ...] = (*index, Ellipsis)  # a view, 0-d too
            read_box(directory, name, record, Box(start, size), _holders(coords, used, mesh),
                     into=trim_to(out[block], size))

        blocks = list(itertools.product(*(range(e) for e in extents)))
        for future in [_IO.submit(context.copy().run, read, b) for b in blocks]:
            future.result()
        return out
    return run


def _holders(coords: tuple[int, ...], used: set[str], mesh: MeshShape) -> list[int]:
    """The devices that hold the block of the device at `coords` (equal along `used`)."""
    ranges = [range(s) if m not in used else (c,) for (m, s), c in zip(mesh.dims, coords)]
    return [int(np.ravel_multi_index(point, mesh.sizes))
            for point in itertools.product(*ranges)]
