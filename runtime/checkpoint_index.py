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

import numpy as np

from dtensor_compiler.errors import CheckpointError
from dtensor_compiler.ir.types import DTYPE_NAMES, LOW_PRECISION_FLOATS, numpy_dtype

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
        """The index in `text` (the file `where`), checked as far as it can be without its
        data files: every number a whole number in range, every dtype known, every slice's
        byte count and checksum count those of its box, every file a plain name the index
        lists; CheckpointError naming the tensor otherwise."""
        try:
            doc = json.loads(text)
            if doc.get("format") != FORMAT:
                raise CheckpointError(f"{where} is not a dtensor-compiler checkpoint index")
            if doc.get("version") != VERSION:
                raise CheckpointError(f"{where} has version {doc.get('version')}; this "
                                      f"release reads version {VERSION}")
            files = {_file_name(k, where): _whole(v, f"the size of {k!r}", where)
                     for k, v in doc["files"].items()}
            tensors = {}
            for name, t in doc["tensors"].items():
                tensors[str(name)] = _record(str(name), t, files, where)
            return Index(_whole(doc["generation"], "the generation", where), tensors, files)
        except CheckpointError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{where} is not a valid checkpoint index "
                                  f"({type(e).__name__}: {e})") from None


def _whole(v: object, what: str, where: str) -> int:
    """`v` if it is a whole number >= 0 (not a bool, not 0.5), else CheckpointError."""
    if type(v) is not int or v < 0:
        raise CheckpointError(f"{where}: {what} is {v!r}, not a whole number >= 0")
    return v


def _file_name(v: object, where: str) -> str:
    """`v` if it names a file in the index's own directory (no path: nothing outside it)."""
    if not isinstance(v, str) or not v or v in (".", "..") or "/" in v or "\\" in v:
        raise CheckpointError(f"{where}: {v!r} is not the name of a data file beside it")
    return v


def _record(name: str, t: dict, files: dict[str, int], where: str) -> TensorRecord:
    what = f"{where}: tensor {name!r}"
    saved_from = None if t["saved_from"] is None else str(t["saved_from"])
    try:
        dtype = stored_dtype(str(t["dtype"]), name)
        if saved_from is not None:
            stored_dtype(saved_from, name)
    except CheckpointError as e:
        raise CheckpointError(f"{where}: {e}") from None
    if not isinstance(t["shape"], list):
        raise CheckpointError(f"{what}: its shape is {t['shape']!r}, not a list")
    shape = tuple(_whole(d, "a dim of its shape", what) for d in t["shape"])
    slices = []
    for s in t["slices"]:
        if not isinstance(s["start"], list) or not isinstance(s["shape"], list):
            raise CheckpointError(f"{what}: a slice's start and shape are not lists")
        box = Box(tuple(_whole(a, "a slice's start", what) for a in s["start"]),
                  tuple(_whole(n, "a slice's extent", what) for n in s["shape"]))
        file = _file_name(s["file"], what)
        if file not in files:
            raise CheckpointError(f"{what}: its slice {box.text()} is in {file!r}, which the "
                                  "index does not list among its files")
        nbytes = _whole(s["nbytes"], f"the byte count of slice {box.text()}", what)
        if nbytes != math.prod(box.shape) * dtype.itemsize:
            raise CheckpointError(f"{what}: its slice {box.text()} has {nbytes} bytes, not the "
                                  f"{math.prod(box.shape) * dtype.itemsize} of its box")
        rows = _whole(s["chunk_rows"], f"the chunk rows of slice {box.text()}", what)
        crcs = tuple(_whole(c, "a checksum", what) for c in s["crc32"])
        chunks = 0 if not nbytes else -(-(box.shape[0] if box.shape else 1) // max(rows, 1))
        if rows < 1 or len(crcs) != chunks:
            raise CheckpointError(f"{what}: its slice {box.text()} has {len(crcs)} checksums "
                                  f"in chunks of {rows} rows, not one per chunk")
        slices.append(StoredSlice(box, file, _whole(s["offset"], "a slice's offset", what),
                                  nbytes, rows, crcs))
    _check_slices(name, shape, tuple(slices), where)
    return TensorRecord(str(t["dtype"]), shape, str(t["layout"]), str(t["mesh"]), saved_from,
                        tuple(slices))


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


_BY_NUMPY_NAME = {LOW_PRECISION_FLOATS.get(n) or np.dtype(numpy_dtype(n)).name: n
                  for n in DTYPE_NAMES}
"""IR dtype names by numpy name (ml_dtypes' by theirs, without importing it)."""


def stored_dtype(name: str, tensor: str | None = None) -> np.dtype:
    """The dtype of a numpy dtype name as the index records it (``bfloat16`` included)."""
    ir_name = _BY_NUMPY_NAME.get(name)
    if ir_name is None:
        of = f" for {tensor!r}" if tensor is not None else ""
        raise CheckpointError(f"the checkpoint stores dtype {name!r}{of}, which this "
                              "installation does not have")
    return numpy_dtype(ir_name)
