"""Reading a checkpoint without a mesh: its table of tensors, a check of every checksum, and
export to plain safetensors (what `dtc ckpt` runs).

Export writes each tensor whole, in global row-major order, assembling it from the stored
slices a band of rows at a time (about `BAND_BYTES`), so memory stays bounded whatever the
checkpoint's size. The output is either one safetensors file or a directory in the layout
of sharded safetensors checkpoints: ``model-00001-of-00003.safetensors`` and so on, plus
``model.safetensors.index.json`` mapping every tensor to its file. Files are written under a
temporary name, fsynced and renamed, so an interrupted export leaves nothing half-written.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dtensor_compiler.errors import CheckpointError
from dtensor_compiler.runtime.checkpoint_data import (
    SAFETENSORS_DTYPES,
    read_box,
    read_stored_slices,
    write_streamed,
)
from dtensor_compiler.runtime.checkpoint_index import (
    Box,
    Index,
    TensorRecord,
    fsync_directory,
    index_path,
    load_index,
    stored_dtype,
    write_durably,
)

BAND_BYTES = 64 << 20
INDEX_NAME = "model.safetensors.index.json"


@dataclass(frozen=True)
class TensorRow:
    """One row of `dtc ckpt ls`."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    layout: str
    mesh: str
    slices: int
    nbytes: int
    """Bytes stored (all slices together)."""


def tensor_rows(prefix: str) -> list[TensorRow]:
    index = load_index(prefix)
    return [TensorRow(name, t.dtype + (f" (from {t.saved_from})" if t.saved_from else ""),
                      t.shape, t.layout, t.mesh, len(t.slices), sum(s.nbytes for s in t.slices))
            for name, t in sorted(index.tensors.items())]


def verify(prefix: str) -> list[str]:
    """Every problem of the checkpoint: missing or resized data files, headers that disagree
    with the index, slices that do not cover their tensor, checksum mismatches. Empty when it
    is sound."""
    index = load_index(prefix)
    directory = index_path(prefix).parent
    problems = []
    headers: dict[str, set[tuple[str, tuple[int, ...], int]]] = {}
    for name, size in sorted(index.files.items()):
        path = directory / name
        if not path.exists():
            problems.append(f"data file {path} is missing")
            continue
        if path.stat().st_size != size:
            problems.append(f"data file {path} has {path.stat().st_size} bytes, the index "
                            f"says {size}")
        try:
            headers[name] = {(n, s.box.start, s.offset) for n, s, _ in read_stored_slices(path)}
        except CheckpointError as e:
            problems.append(str(e))
    for name, t in sorted(index.tensors.items()):
        for s in t.slices:
            if s.file in headers and (name, s.box.start, s.offset) not in headers[s.file]:
                problems.append(f"{name}: {directory / s.file} has no slice at "
                                f"{s.box.text()} where the index puts it")
        if t.slices and not t.complete:
            problems.append(f"{name}: the stored slices cover only part of it")
        for s in t.slices:
            if s.file not in headers:
                continue
            try:
                read_box(directory, name, t, s.box, [])
            except CheckpointError as e:
                problems.append(str(e))
    return problems


def _bands(directory: Path, name: str, t: TensorRecord) -> Iterator[np.ndarray]:
    """The tensor in bands of whole rows of dim 0, in order."""
    if not t.complete:
        raise CheckpointError(f"{name}: the checkpoint holds only part of it; it cannot be "
                              "exported whole")
    if not t.shape:
        yield read_box(directory, name, t, Box((), ()), [])
        return
    row = stored_dtype(t.dtype).itemsize * math.prod(t.shape[1:])
    step = max(1, BAND_BYTES // max(row, 1))
    for a in range(0, t.shape[0], step):
        n = min(step, t.shape[0] - a)
        yield read_box(directory, name, t, Box((a,) + (0,) * (len(t.shape) - 1),
                                               (n,) + t.shape[1:]), [])


def _size(t: TensorRecord) -> int:
    return math.prod(t.shape) * stored_dtype(t.dtype).itemsize


def export(prefix: str, out: str, max_shard_bytes: int | None = None) -> list[Path]:
    """Write the checkpoint as plain safetensors at `out`: one file when `out` ends in
    ``.safetensors`` (replaced if it exists), else a new directory of shards of at most
    `max_shard_bytes` each (a tensor larger than that gets a shard of its own) with its
    index; missing parent directories are made. Returns the files written. ValueError for
    an `out` that names no file (``/``, ``.``), CheckpointError for a directory that exists."""
    index = load_index(prefix)
    directory = index_path(prefix).parent
    for name, t in index.tensors.items():
        if name == "__metadata__":
            raise CheckpointError("a tensor named '__metadata__' cannot be exported: "
                                  "safetensors reserves that key")
        if t.dtype not in SAFETENSORS_DTYPES:
            raise CheckpointError(f"{name}: dtype {t.dtype} has no safetensors code")
    target = Path(out).absolute()
    if not target.name or target.name in (".", ".."):
        raise ValueError(f"cannot export to {out!r}: give a new directory or a .safetensors "
                         "file")
    if target.suffix == ".safetensors":
        target.parent.mkdir(parents=True, exist_ok=True)
        _write_file(target, directory, index, sorted(index.tensors))
        return [target]
    if target.exists():
        raise CheckpointError(f"{target} already exists; export into a new directory")
    groups: list[list[str]] = [[]]
    size = 0
    limit = max_shard_bytes or (2 << 30)
    for name in sorted(index.tensors):
        n = _size(index.tensors[name])
        if groups[-1] and size + n > limit:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += n
    staging = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        weight_map, files = {}, []
        for i, names in enumerate(groups, 1):
            file = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
            _write_file(staging / file, directory, index, names)
            weight_map.update({n: file for n in names})
            files.append(target / file)
        doc = {"metadata": {"total_size": sum(_size(t) for t in index.tensors.values())},
               "weight_map": weight_map}
        write_durably(staging / INDEX_NAME, (json.dumps(doc, indent=2) + "\n").encode())
        if target.exists():
            raise CheckpointError(f"{target} already exists; export into a new directory")
        staging.rename(target)
        fsync_directory(target.parent)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return files + [target / INDEX_NAME]


def _write_file(path: Path, directory: Path, index: Index, names: list[str]) -> None:
    entries = [(name, stored_dtype(index.tensors[name].dtype), index.tensors[name].shape,
                _bands(directory, name, index.tensors[name])) for name in names]
    write_streamed(path, entries)
