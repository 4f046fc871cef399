"""Checkpoint data files: safetensors files with a crc32 per row chunk, and positioned reads.

A data file is a plain safetensors file (an 8-byte little-endian header length, the JSON
header, then the tensors back to back, each aligned to its element size), so the
``safetensors`` library opens it. Each entry is one stored slice, keyed ``name@start,...``.
safetensors has no checksum, so the header's ``__metadata__`` carries, under
``dtensor_compiler``, each entry's tensor name, box start, rows per chunk and the crc32 of
every chunk (fixed-width hex, so the header is written first, with zeros, and rewritten in
place once the data is out). A chunk is a run of whole rows of dim 0 of about `CHUNK_BYTES`;
a reader reads and checks whole chunks, so a block that needs some rows of a stored slice
reads only the chunks that hold them.

Every write ends in fsync. `IOStats` counts bytes read and written per device for whoever
asks (`counting`).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import math
import os
import struct
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dtensor_compiler.errors import CheckpointError
from dtensor_compiler.runtime.checkpoint_index import (
    Box,
    StoredSlice,
    TensorRecord,
    durable_file,
    stored_dtype,
)
from dtensor_compiler.runtime.checksum import crc32

CHUNK_BYTES = 1 << 20
"""About how many bytes each checksummed chunk holds (at least one row)."""
_WRITE_BYTES = 64 << 20
"""Bytes per write call."""
_READ_BYTES = 2 << 20
"""About how many bytes a restore reads at a time (whole chunks)."""
_META_KEY = "dtensor_compiler"

SAFETENSORS_DTYPES = {
    "bool": "BOOL", "uint8": "U8", "int8": "I8", "uint16": "U16", "int16": "I16",
    "uint32": "U32", "int32": "I32", "uint64": "U64", "int64": "I64", "float16": "F16",
    "bfloat16": "BF16", "float32": "F32", "float64": "F64", "complex64": "C64",
    "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
}
"""numpy dtype name -> safetensors dtype code."""


@dataclass
class IOStats:
    """Bytes read and written per device id."""

    read: dict[int, int] = field(default_factory=dict)
    written: dict[int, int] = field(default_factory=dict)

    def add_read(self, device: int, n: int) -> None:
        self.read[device] = self.read.get(device, 0) + n

    def add_written(self, device: int, n: int) -> None:
        self.written[device] = self.written.get(device, 0) + n


_STATS: contextvars.ContextVar[IOStats | None] = contextvars.ContextVar("ckpt_stats",
                                                                         default=None)


@contextlib.contextmanager
def counting() -> Iterator[IOStats]:
    """Count the checkpoint bytes read and written inside the block."""
    stats = IOStats()
    token = _STATS.set(stats)
    try:
        yield stats
    finally:
        _STATS.reset(token)


def _stats() -> IOStats:
    return _STATS.get() or IOStats()


_PROGRESS: contextvars.ContextVar[Callable[[int], None] | None] = contextvars.ContextVar(
    "ckpt_progress", default=None)


@contextlib.contextmanager
def reporting(advance: Callable[[int], None]) -> Iterator[None]:
    """Call `advance(n)` after every `n` bytes of checkpoint data written or read inside the
    block (for a progress bar)."""
    token = _PROGRESS.set(advance)
    try:
        yield
    finally:
        _PROGRESS.reset(token)


def _advance(n: int) -> None:
    advance = _PROGRESS.get()
    if advance is not None:
        advance(n)


def entry_key(name: str, start: Sequence[int]) -> str:
    return f"{name}@{','.join(str(s) for s in start)}"


def chunk_rows(shape: Sequence[int], itemsize: int) -> int:
    """Rows of dim 0 per checksummed chunk of a slice of `shape` (elements for 0-d)."""
    return max(1, CHUNK_BYTES // max(_row_bytes(shape, itemsize), 1))


def _chunks(nbytes: int, rows: int, row_bytes: int) -> list[tuple[int, int]]:
    step = rows * row_bytes
    return [(a, min(a + step, nbytes)) for a in range(0, nbytes, step)] if step else []


def _row_bytes(shape: Sequence[int], itemsize: int) -> int:
    return itemsize * math.prod(shape[1:]) if shape else itemsize


@dataclass(frozen=True)
class Piece:
    """One slice a writer stores: the tensor's name, the box, and its C-contiguous data."""

    name: str
    box: Box
    data: np.ndarray


def write_data_file(path: Path, pieces: Sequence[Piece], device: int) -> None:
    """Write `pieces` as the safetensors file `path`, checksummed, and fsync it."""
    for p in pieces:
        if p.data.dtype.name not in SAFETENSORS_DTYPES:
            raise CheckpointError(f"{p.name}: dtype {p.data.dtype} cannot be stored in "
                                  "safetensors")
        assert p.data.flags.c_contiguous, "safetensors writes the buffer as it lies"
        assert p.data.shape == p.box.shape, (p.name, p.data.shape, p.box)
    order = sorted(pieces, key=lambda p: -p.data.dtype.itemsize)  # keeps every entry aligned
    keys = [entry_key(p.name, p.box.start) for p in order]
    entries = [(k, p.data.dtype, p.data.shape) for k, p in zip(keys, order)]
    meta: dict[str, dict[str, object]] = {}
    for key, p in zip(keys, order):
        itemsize = p.data.dtype.itemsize
        rows = chunk_rows(p.data.shape, itemsize)
        n = len(_chunks(p.data.nbytes, rows, _row_bytes(p.data.shape, itemsize)))
        meta[key] = {"name": p.name, "start": list(p.box.start), "chunk_rows": rows,
                     "crc32": "0" * (8 * n)}
    blob = _header_bytes(entries, _metadata(meta))
    pool = ThreadPoolExecutor(1)  # checksums beside the writes (crc32 drops the GIL)
    try:
        crcs = [pool.submit(_crcs, p.data) for p in order]
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _write_all(fd, blob)
            for p in order:
                _write_all(fd, p.data.reshape(-1).view(np.uint8).data)
            for key, future in zip(keys, crcs):
                meta[key]["crc32"] = "".join(f"{c:08x}" for c in future.result())
            final = _header_bytes(entries, _metadata(meta))
            assert len(final) == len(blob), "checksums are fixed-width"
            os.pwrite(fd, final, 0)
            os.fsync(fd)
        finally:
            os.close(fd)
    finally:
        pool.shutdown()
    _stats().add_written(device, len(blob) + sum(p.data.nbytes for p in order))


def write_streamed(path: Path,
                   entries: Sequence[tuple[str, np.dtype, tuple[int, ...],
                                           Iterable[np.ndarray]]]) -> None:
    """A plain safetensors file of whole tensors, each given as (name, dtype, shape, its
    data in order as C-contiguous parts), written without holding any tensor whole; under a
    temporary name, fsynced, then renamed into place."""
    order = sorted(entries, key=lambda e: -e[1].itemsize)  # keeps every entry aligned
    header = _header_bytes([(name, dtype, shape) for name, dtype, shape, _ in order],
                           {"format": "pt"})
    with durable_file(path) as fd:
        _write_all(fd, header)
        for name, dtype, shape, parts in order:
            written = 0
            for part in parts:
                assert part.dtype == dtype and part.flags.c_contiguous
                _write_all(fd, part.reshape(-1).view(np.uint8).data)
                written += part.nbytes
            assert written == math.prod(shape) * dtype.itemsize, name


def _header_bytes(entries: Sequence[tuple[str, np.dtype, tuple[int, ...]]],
                  metadata: dict[str, str]) -> bytes:
    """The header of a safetensors file holding `entries` (key, dtype, shape) back to back in
    this order: its length, then the JSON with `metadata`, padded to 8 bytes."""
    doc: dict[str, object] = {}
    offset = 0
    for key, dtype, shape in entries:
        nbytes = math.prod(shape) * dtype.itemsize
        doc[key] = {"dtype": SAFETENSORS_DTYPES[dtype.name], "shape": list(shape),
                    "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    doc["__metadata__"] = metadata
    text = json.dumps(doc, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def _metadata(meta: dict[str, dict[str, object]]) -> dict[str, str]:
    """The ``__metadata__`` of a data file (string values only, as safetensors wants)."""
    return {_META_KEY: json.dumps(meta, separators=(",", ":"))}


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view[:_WRITE_BYTES])
        view = view[written:]
        _advance(written)


def _crcs(data: np.ndarray) -> list[int]:
    flat = data.reshape(-1).view(np.uint8).data
    rows = chunk_rows(data.shape, data.dtype.itemsize)
    return [crc32(flat[a:b]) for a, b in
            _chunks(data.nbytes, rows, _row_bytes(data.shape, data.dtype.itemsize))]


def read_stored_slices(path: Path) -> list[tuple[str, StoredSlice, str]]:
    """The slices a data file holds: (tensor name, slice, stored dtype name) each, with
    absolute byte offsets."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path} is truncated: no safetensors header")
            (n,) = struct.unpack("<Q", head)
            if n > 100_000_000:
                raise CheckpointError(f"{path} is not a safetensors file (header of {n} bytes)")
            text = f.read(n)
    except FileNotFoundError:
        raise CheckpointError(f"data file {path} is missing") from None
    try:
        header = json.loads(text)
        meta = json.loads(header.pop("__metadata__")[_META_KEY])
        codes = {v: k for k, v in SAFETENSORS_DTYPES.items()}
        out = []
        for key, entry in header.items():
            m = meta[key]
            begin, end = entry["data_offsets"]
            crc = m["crc32"]
            box = Box(tuple(m["start"]), tuple(entry["shape"]))
            out.append((m["name"], StoredSlice(
                box, path.name, 8 + n + begin, end - begin, int(m["chunk_rows"]),
                tuple(int(crc[i:i + 8], 16) for i in range(0, len(crc), 8))),
                codes[entry["dtype"]]))
        return out
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{path} has a malformed header ({type(e).__name__}: {e})"
                              ) from None


def read_box(directory: Path, name: str, record: TensorRecord, box: Box,
             devices: Sequence[int], into: np.ndarray | None = None) -> np.ndarray:
    """The `box` of the stored tensor `name` (in `into`, if given), assembled from the stored
    slices that overlap it, as each of `devices` reads it (their reads are counted); every
    chunk read is checked against its crc32. Whole chunks whose rows the box takes in full
    are read straight into their place in the result (`_Rows`), the others through a
    buffer."""
    dtype = stored_dtype(record.dtype)
    out = np.empty(box.shape, dtype=dtype) if into is None else into
    assert out.shape == box.shape and out.dtype == dtype
    covered = 0
    for s in record.slices:
        part = s.box.intersect(box)
        if part is None or math.prod(part.shape) == 0:
            continue
        covered += math.prod(part.shape)
        if not s.box.shape:
            for _, value in _read_rows(directory, name, s, part, dtype, devices):
                out[()] = value
            continue
        inner_src = tuple(slice(a - b, a - b + n) for a, b, n in
                          zip(part.start[1:], s.box.start[1:], part.shape[1:]))
        inner_dst = tuple(slice(a - b, a - b + n) for a, b, n in
                          zip(part.start[1:], box.start[1:], part.shape[1:]))
        rows = _Rows(out, box, part, inner_dst) if part.shape[1:] == s.box.shape[1:] else None
        for first, got in _read_rows(directory, name, s, part, dtype, devices, rows):
            top = s.box.start[0] + first  # the global row of got[0]
            lo = max(part.start[0], top)
            hi = min(part.start[0] + part.shape[0], top + got.shape[0])
            out[(slice(lo - box.start[0], hi - box.start[0]), *inner_dst)] = \
                got[(slice(lo - top, hi - top), *inner_src)]
    if covered < math.prod(box.shape):
        raise CheckpointError(f"{name}: the stored slices do not cover {box.text()}")
    return out


@dataclass(frozen=True)
class _Rows:
    """Where whole rows of a stored slice go in a read's result: the rows of `part` (which
    spans the slice's inner dims), at `inner` of `out` (whose box is `box`)."""

    out: np.ndarray
    box: Box
    part: Box
    inner: tuple[slice, ...]

    def view(self, top: int, n: int) -> memoryview | None:
        """The bytes of global rows ``top .. top + n`` in the result; None when some of
        them are outside `part` or they are not contiguous there (rows of a stored slice
        next to others' in the result: a copy from the read buffer costs less there than
        checksumming one segment per row)."""
        if top < self.part.start[0] or top + n > self.part.start[0] + self.part.shape[0]:
            return None
        lo = top - self.box.start[0]
        region = self.out[(slice(lo, lo + n), *self.inner)]
        return region.reshape(-1).view(np.uint8).data if region.flags.c_contiguous else None


def _read_rows(directory: Path, name: str, s: StoredSlice, part: Box, dtype: np.dtype,
               devices: Sequence[int], into: _Rows | None = None
               ) -> Iterator[tuple[int, np.ndarray]]:
    """The whole chunks of `s` that hold the rows of `part`, checked, a few at a time (about
    `_READ_BYTES`, so that each piece is still in the CPU's cache when its checksums are
    computed and it is copied out): per piece, the index within `s` of its first row, and
    its rows (a view of this thread's read buffer, valid until the next piece). A piece
    whose rows `into` takes whole is read there instead, checked there, and not yielded."""
    shape = s.box.shape
    row = _row_bytes(shape, dtype.itemsize)
    if s.nbytes != row * (shape[0] if shape else 1):
        raise CheckpointError(f"{name}: the index gives {s.nbytes} bytes for {s.box.text()} "
                              f"of {dtype}")
    if shape:
        lo = part.start[0] - s.box.start[0]
        first_chunk, end_chunk = lo // s.chunk_rows, -(-(lo + part.shape[0]) // s.chunk_rows)
    else:
        first_chunk, end_chunk = 0, 1
    if end_chunk > len(s.crc32):
        raise CheckpointError(f"{name}: the index lists {len(s.crc32)} checksums for "
                              f"{s.box.text()}, too few")
    step = s.chunk_rows * row
    per_piece = max(1, _READ_BYTES // step)
    path = directory / s.file
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise CheckpointError(f"{name}: data file {path} is missing") from None
    try:
        os.posix_fadvise(fd, s.offset + first_chunk * step,
                         (end_chunk - first_chunk) * step, os.POSIX_FADV_SEQUENTIAL)
        stats = _stats()
        for chunk in range(first_chunk, end_chunk, per_piece):
            begin = chunk * step
            end = min((chunk + per_piece) * step, end_chunk * step, s.nbytes)
            view = None if into is None or not row else into.view(
                s.box.start[0] + begin // row, (end - begin) // row)
            scratch = None
            if view is None:
                scratch = _scratch(end - begin)
                view = scratch.data
            got = _read_at(fd, view, s.offset + begin)
            for device in devices:
                stats.add_read(device, got)
            _advance(got)
            if got != end - begin:
                raise CheckpointError(f"{name}: data file {path} is truncated (bytes "
                                      f"{s.offset + begin}..{s.offset + end} of "
                                      f"{s.box.text()} are not all there)")
            for i, a in enumerate(range(0, len(view), step)):
                if crc32(view[a:a + step]) != s.crc32[chunk + i]:
                    raise CheckpointError(f"{name}: data file {path} is corrupt (checksum "
                                          f"mismatch in chunk {chunk + i} of "
                                          f"{s.box.text()})")
            if scratch is None:
                continue  # (read into place)
            array = scratch.view(dtype)
            if not shape:
                yield 0, array.reshape(())
            else:
                yield chunk * s.chunk_rows, array.reshape((-1,) + shape[1:])
    finally:
        os.close(fd)


_SCRATCH = threading.local()


def _scratch(n: int) -> np.ndarray:
    """`n` bytes of this thread's read buffer, reused from read to read (a fresh buffer of
    megabytes costs a page fault per 4 KiB each time). Valid until the thread's next read."""
    buf: np.ndarray | None = getattr(_SCRATCH, "buf", None)
    if buf is None or buf.size < n:
        buf = np.empty(max(n, CHUNK_BYTES), dtype=np.uint8)
        _SCRATCH.buf = buf
    return buf[:n]


def _read_at(fd: int, into: memoryview, offset: int) -> int:
    """Fill `into` from `offset` of the file (positioned reads, as many as it takes); the
    number of bytes read, short only at the end of the file."""
    got = 0
    while got < len(into):
        n = os.preadv(fd, [into[got:]], offset + got)
        if n == 0:
            break
        got += n
    return got
