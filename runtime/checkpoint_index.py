"""The index of a checkpoint: what was saved, where each slice lies, and the commit protocol.

A checkpoint at prefix ``P`` (``/ckpt/model-3``) is the index ``P.index.json`` and the data
files it names, ``P.<generation>.data-<device>.safetensors`` (one per writer device, in the
safetensors format). The index is the commit record: a checkpoint exists once its index is in
place, and only the files it names belong to it. It holds, per tensor, the stored dtype, the
global shape, the layout and mesh it was saved with, the dtype it was saved from (a float32
saved as bfloat16), and every stored slice: its box in global coordinates, its file, its byte
range, and the crc32 of each chunk of its rows.

`commit` writes the index under a temporary name, fsyncs it, renames it into place and fsyncs
the directory, then removes, in a background thread, the data files of the prefix the new
index does not name (the previous generation, or the leftovers of a save that was killed).
Each save writes a new generation beside the files of the last committed one, so a save
killed at any moment leaves the previous checkpoint whole, and the new one complete or
absent.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from dtensor_compiler.errors import CheckpointError

FORMAT = "dtensor-compiler-checkpoint"
VERSION = 1
INDEX_SUFFIX = ".index.json"
_DATA = re.compile(r"\.(\d+)\.data-(\d+)\.safetensors")


def index_path(prefix: str) -> Path:
    return Path(prefix + INDEX_SUFFIX)


def data_file_name(prefix: str, generation: int, device: int) -> str:
    """The name (within the prefix's directory) of a writer's data file."""
    return f"{Path(prefix).name}.{generation}.data-{device:05d}.safetensors"


@dataclass(frozen=True)
class Box:
    """A box of a tensor in global coordinates: where it starts along each dim, its extent."""

    start: tuple[int, ...]
    shape: tuple[int, ...]

    def intersect(self, other: Box) -> Box | None:
        start, shape = [], []
        for a, n, b, m in zip(self.start, self.shape, other.start, other.shape):
            lo, hi = max(a, b), min(a + n, b + m)
            if hi <= lo and (n or m):
                return None
            start.append(lo)
            shape.append(max(hi - lo, 0))
        return Box(tuple(start), tuple(shape))

    def text(self) -> str:
        return "[" + ", ".join(f"{a}:{a + n}" for a, n in zip(self.start, self.shape)) + "]"

    def overlaps(self, other: Box) -> bool:
        """Whether the boxes share an element (an empty box shares none)."""
        return all(a < b + m and b < a + n
                   for a, n, b, m in zip(self.start, self.shape, other.start, other.shape))


@dataclass(frozen=True)
class StoredSlice:
    """One box of a tensor as stored: ``nbytes`` at ``offset`` of ``file``, in row chunks of
    ``chunk_rows`` rows (of dim 0; elements for a 0-d tensor), each with its crc32."""

    box: Box
    file: str
    offset: int
    nbytes: int
    chunk_rows: int
    crc32: tuple[int, ...]


@dataclass(frozen=True)
class TensorRecord:
    dtype: str
    """The stored dtype (a numpy dtype name)."""
    shape: tuple[int, ...]
    layout: str
    """The layout it was saved with, as the IR writes it (``{dp, -}``)."""
    mesh: str
    saved_from: str | None
    """The dtype it had before saving when that differs (float32 saved as bfloat16)."""
    slices: tuple[StoredSlice, ...]

    @property
    def complete(self) -> bool:
        """Whether the stored slices cover the whole tensor (they never overlap: see
        `load_index`)."""
        return sum(math.prod(s.box.shape) for s in self.slices) == math.prod(self.shape)


@dataclass(frozen=True)
class Index:
    generation: int
    tensors: dict[str, TensorRecord]
    files: dict[str, int]
    """Data file name -> its size in bytes."""

    def to_json(self) -> str:
        tensors = {}
        for name, t in self.tensors.items():
            tensors[name] = {
                "dtype": t.dtype, "shape": list(t.shape), "layout": t.layout, "mesh": t.mesh,
                "saved_from": t.saved_from,
                "slices": [{"start": list(s.box.start), "shape": list(s.box.shape),
                            "file": s.file, "offset": s.offset, "nbytes": s.nbytes,
                            "chunk_rows": s.chunk_rows, "crc32": list(s.crc32)}
                           for s in t.slices]}
        return json.dumps({"format": FORMAT, "version": VERSION,
                           "generation": self.generation, "files": self.files,
                           "tensors": tensors}, indent=1) + "\n"

    @staticmethod
    def from_json(text: str, where: str) -> Index:
        try:
            doc = json.loads(text)
            if doc.get("format") != FORMAT:
                raise CheckpointError(f"{where} is not a dtensor-compiler checkpoint index")
            if doc.get("version") != VERSION:
                raise CheckpointError(f"{where} has version {doc.get('version')}; this "
                                      f"release reads version {VERSION}")
            tensors = {}
            for name, t in doc["tensors"].items():
                slices = tuple(
                    StoredSlice(Box(tuple(map(int, s["start"])), tuple(map(int, s["shape"]))),
                                str(s["file"]), int(s["offset"]), int(s["nbytes"]),
                                int(s["chunk_rows"]), tuple(int(c) for c in s["crc32"]))
                    for s in t["slices"])
                shape = tuple(int(d) for d in t["shape"])
                _check_slices(str(name), shape, slices, where)
                tensors[str(name)] = TensorRecord(
                    str(t["dtype"]), shape, str(t["layout"]), str(t["mesh"]),
                    None if t["saved_from"] is None else str(t["saved_from"]), slices)
            files = {str(k): int(v) for k, v in doc["files"].items()}
            return Index(int(doc["generation"]), tensors, files)
        except CheckpointError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{where} is not a valid checkpoint index "
                                  f"({type(e).__name__}: {e})") from None


_PARSED: dict[Path, tuple[tuple[int, int, int], Index]] = {}
"""The last index parsed per path, with the (inode, size, mtime) it was parsed at: a restore
of many tensors reads the index once."""


def _check_slices(name: str, shape: tuple[int, ...], slices: tuple[StoredSlice, ...],
                  where: str) -> None:
    """CheckpointError unless the stored slices of `name` lie inside its shape and do not
    overlap (so their volumes add up to what they cover)."""
    boxes = [s.box for s in slices]
    for b in boxes:
        if len(b.start) != len(shape) or len(b.shape) != len(shape) or any(
                a < 0 or n < 0 or a + n > d for a, n, d in zip(b.start, b.shape, shape)):
            raise CheckpointError(f"{where}: the slice {b.text()} of {name!r} does not fit "
                                  f"its shape {list(shape)}")
    if not shape:
        if len(boxes) > 1:
            raise CheckpointError(f"{where}: {name!r} is 0-d but has {len(boxes)} slices")
        return
    boxes = sorted((b for b in boxes if all(b.shape)), key=lambda b: b.start)
    for i, b in enumerate(boxes):
        for c in boxes[i + 1:]:
            if c.start[0] >= b.start[0] + b.shape[0]:
                break
            if b.overlaps(c):
                raise CheckpointError(f"{where}: the slices {b.text()} and {c.text()} of "
                                      f"{name!r} overlap")


def load_index(prefix: str) -> Index:
    """The committed index of `prefix`; CheckpointError when there is none or it is bad."""
    path = index_path(prefix)
    try:
        st = path.stat()
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        cached = _PARSED.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {prefix} ({path} does not exist)") from None
    except UnicodeDecodeError:
        raise CheckpointError(f"{path} is not a valid checkpoint index (not UTF-8)") from None
    index = Index.from_json(text, str(path))
    _PARSED[path] = (stamp, index)
    return index


def next_generation(prefix: str) -> int:
    """The generation a new save of `prefix` writes: one past the committed one (every writer
    reads the same committed index, so all agree without talking)."""
    try:
        return load_index(prefix).generation + 1
    except CheckpointError:
        return 0


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def durable_file(path: Path) -> Iterator[int]:
    """A descriptor to write the file `path` through, atomically: the block writes a
    temporary file, which is fsynced and renamed over `path`, and the directory fsynced;
    if the block raises, the temporary file is removed and `path` is untouched."""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{os.urandom(4).hex()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            yield fd
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_directory(path.parent)


def write_durably(path: Path, data: bytes) -> None:
    """`data` as the file `path`, atomically (see `durable_file`)."""
    with durable_file(path) as fd:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]


_CLEANER = ThreadPoolExecutor(1, thread_name_prefix="dtc-checkpoint-cleanup")
_CLEANUPS: list[Future[None]] = []


def commit(prefix: str, index: Index) -> None:
    """Make `index` the checkpoint of `prefix`, then remove the prefix's other data files in
    the background (unlinking a large file takes a while; `wait_for_cleanup` waits)."""
    path = index_path(prefix)
    write_durably(path, index.to_json().encode())
    base = Path(prefix).name
    stale = []
    for other in path.parent.iterdir():
        name = other.name
        if name.startswith(base) and _DATA.fullmatch(name[len(base):]) and name not in (
                index.files):
            stale.append(other)
        elif name.startswith(base + INDEX_SUFFIX + ".tmp-") and not _in_progress(name):
            stale.append(other)
    if stale:
        _CLEANUPS[:] = [f for f in _CLEANUPS if not f.done()]
        _CLEANUPS.append(_CLEANER.submit(_remove, stale))


def _remove(paths: list[Path]) -> None:
    for p in paths:
        p.unlink(missing_ok=True)


def wait_for_cleanup() -> None:
    """Wait until the files of earlier generations that commits scheduled for removal are
    gone."""
    for f in list(_CLEANUPS):
        f.result()


def _in_progress(tmp_name: str) -> bool:
    """Whether the process that owns a temporary index file still runs."""
    pid = tmp_name.rsplit(".tmp-", 1)[1].split("-")[0]
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def data_files(prefix: str) -> list[Path]:
    """Every data file of `prefix` on disk, committed or not."""
    path = Path(prefix)
    if not path.parent.is_dir():
        return []
    return sorted(p for p in path.parent.iterdir()
                  if p.name.startswith(path.name) and _DATA.fullmatch(p.name[len(path.name):]))
