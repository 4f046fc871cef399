"""Resharding restore: a checkpoint saved in any layout on a 2x4, 4x2 or 8-device mesh restores
bit-exactly into every layout on every other, for rank-2 and rank-3 tensors, even and uneven
(7x5x3 divides by no group of mesh dims: blocks are short or empty); each device reads only
the rows its block needs, and no padding reaches the files."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

import dtensor_compiler as dtc
from dtensor_compiler.checkpoint.programs import RestoreEntry, lower_restore
from dtensor_compiler.runtime import checkpoint_data
from dtensor_compiler.runtime.checkpoint_index import load_index

U = dtc.UNSHARDED

MESHES = {"2x4": [("a", 2), ("b", 4)], "4x2": [("a", 4), ("b", 2)], "8": [("a", 8)]}
SHAPES = {2: (8, 16), 3: (8, 8, 8), "uneven": (7, 5, 3)}


def layouts(mesh: dtc.Mesh, rank: int) -> list[dtc.Layout]:
    """Every layout of a rank-`rank` tensor on `mesh`: each mesh dim on one tensor dim or
    none, several on one dim in either order."""
    names = list(mesh.dim_names)
    out = []
    for placement in itertools.product(range(rank + 1), repeat=len(names)):
        per_dim: list[list[str]] = [[] for _ in range(rank)]
        for name, dim in zip(names, placement):
            if dim < rank:
                per_dim[dim].append(name)
        for orders in itertools.product(*(itertools.permutations(d) for d in per_dim)):
            specs = [dtc.UNSHARDED if not o else o[0] if len(o) == 1 else tuple(o)
                     for o in orders]
            out.append(dtc.Layout(specs, mesh))
    return out


def bits(rank: int | str) -> np.ndarray:
    """Values whose bytes tell every element apart (NaN payloads and -0.0 included)."""
    shape = SHAPES[rank]
    raw = (np.arange(np.prod(shape), dtype=np.uint64) * 2654435761 % (1 << 32)).astype(np.uint32)
    raw[:3] = [0x80000000, 0x7FC00001, 0xFF800000]
    return raw.astype(np.uint32).view(np.float32).reshape(shape)


@pytest.mark.parametrize("rank", [2, 3, "uneven"])
@pytest.mark.parametrize("source", list(MESHES))
def test_every_layout_pair(rank: int | str, source: str, tmp_path: Path) -> None:
    data = bits(rank)
    src_mesh = dtc.create_mesh(MESHES[source])
    saved = layouts(src_mesh, data.ndim)
    names = [f"t{i}" for i in range(len(saved))]
    dtc.name_based_save(src_mesh, tmp_path / "ck", {
        n: dtc.copy_to_mesh(data, layout) for n, layout in zip(names, saved)})
    pairs = 0
    for target in MESHES.values():
        mesh = dtc.create_mesh(target)
        for layout in layouts(mesh, data.ndim):
            zeros = dtc.copy_to_mesh(np.zeros_like(data), layout)
            restored = dtc.name_based_restore(mesh, tmp_path / "ck", dict.fromkeys(names, zeros))
            for name, out in restored.items():
                assert out.layout == layout
                assert np.asarray(out).tobytes() == data.tobytes(), (name, layout)
                pairs += 1
    counts = {2: (11, 11, 3), 3: (19, 19, 4)}[data.ndim]
    assert len(saved) == counts[list(MESHES).index(source)]
    assert pairs == len(saved) * sum(counts)


def test_each_device_reads_only_its_rows(tmp_path: Path) -> None:
    """A 16 MiB tensor saved sharded by rows over 8 devices, restored onto a 2x4 mesh: sharded
    by rows over all 8 devices, each reads exactly its 2 MiB. A target that repeats each block
    over some mesh dims is read once per group and gathered (cheaper than every device
    reading it under the cost model), so there too each device reads 2 MiB."""
    data = np.arange(4096 * 1024, dtype=np.float32).reshape(4096, 1024)
    src = dtc.create_mesh([("x", 8)])
    dtc.name_based_save(src, tmp_path / "ck", {
        "w": dtc.copy_to_mesh(data, dtc.Layout(["x", U], src))})
    mesh = dtc.create_mesh([("a", 2), ("b", 4)])
    for specs, gathers in (([("a", "b"), U], []), (["a", U], ["all_gather b"]),
                           ([U, U], ["all_gather a, b"])):
        layout = dtc.Layout(specs, mesh)
        target = dtc.copy_to_mesh(np.zeros((4096, 1024), np.float32), layout)
        with checkpoint_data.counting() as stats:
            out = dtc.name_based_restore(mesh, tmp_path / "ck", {"w": target})
        assert np.asarray(out["w"]).tobytes() == data.tobytes()
        assert stats.read == dict.fromkeys(range(8), 2 << 20), specs
        entry = RestoreEntry("w", "f32", "f32", data.shape, layout)
        program = lower_restore(mesh, str(tmp_path / "ck"), [entry])
        assert [f"{c.kind} {', '.join(c.mesh_dims)}" for c in program.collectives()] == gathers


@pytest.mark.parametrize("specs", [["x", U], [("x", "y"), U], [U, "y"], ["y", "x"]], ids=str)
def test_uneven_blocks_are_saved_as_their_exact_slices(specs, tmp_path: Path) -> None:
    """10 rows over x=4 are blocks of 3, 3, 3 and 1 (over x*y = 8: 2, 2, 2, 2, 2, 0, 0, 0):
    the index lists exactly the valid boxes, empty blocks write nothing, and the data files
    hold the tensor's bytes once, no padding."""
    mesh = dtc.create_mesh([("x", 4), ("y", 2)])
    data = np.arange(10 * 3, dtype=np.float32).reshape(10, 3)
    layout = dtc.Layout(specs, mesh)
    dtc.name_based_save(mesh, tmp_path / "ck", {"w": dtc.copy_to_mesh(data, layout)})
    slices = load_index(str(tmp_path / "ck")).tensors["w"].slices
    assert sum(s.nbytes for s in slices) == data.nbytes
    rows = [s.box.text() for s in slices]
    boxes = {"x": ["[0:3, 0:3]", "[3:6, 0:3]", "[6:9, 0:3]", "[9:10, 0:3]"],
             "('x', 'y')": ["[0:2, 0:3]", "[2:4, 0:3]", "[4:6, 0:3]", "[6:8, 0:3]",
                            "[8:10, 0:3]"],
             "unsharded": ["[0:10, 0:2]", "[0:10, 2:3]"],
             "y": [f"[{r}, {c}]" for r in ("0:5", "5:10") for c in ("0:1", "1:2", "2:3")],
             }[str(specs[0])]
    assert sorted(rows) == sorted(boxes)
    back = dtc.name_based_restore(mesh, tmp_path / "ck", {
        "w": dtc.copy_to_mesh(np.zeros_like(data), dtc.Layout([U, ("y", "x")], mesh))})
    assert np.asarray(back["w"]).tobytes() == data.tobytes()


def test_small_replicated_tensors_are_read_by_every_device(tmp_path: Path) -> None:
    mesh = dtc.create_mesh([("a", 2), ("b", 4)])
    entry = RestoreEntry("b", "f32", "f32", (64,), dtc.Layout([U], mesh))
    assert lower_restore(mesh, str(tmp_path / "ck"), [entry]).collectives() == []


def test_column_blocks_read_whole_rows(tmp_path: Path) -> None:
    """Stored rows are checksummed in chunks of whole rows, so a device whose block is a
    column strip reads the rows it crosses whole: here 4x its block."""
    data = np.arange(512 * 512, dtype=np.float32).reshape(512, 512)
    mesh = dtc.create_mesh([("a", 2), ("b", 4)])
    dtc.name_based_save(mesh, tmp_path / "ck", {
        "w": dtc.copy_to_mesh(data, dtc.Layout(["a", dtc.UNSHARDED], mesh))})
    target = dtc.copy_to_mesh(np.zeros_like(data), dtc.Layout(["a", "b"], mesh))
    with checkpoint_data.counting() as stats:
        out = dtc.name_based_restore(mesh, tmp_path / "ck", {"w": target})
    assert np.asarray(out["w"]).tobytes() == data.tobytes()
    assert stats.read == dict.fromkeys(range(8), data.nbytes // 2)


def test_reads_in_pieces_of_a_few_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                         ) -> None:
    """A restore reads a stored slice a few checksummed chunks at a time: with chunks of 2
    rows and pieces of 3 chunks, blocks starting and ending inside chunks and pieces are
    still exact in every layout, and a device reads the whole chunks its rows touch."""
    monkeypatch.setattr(checkpoint_data, "CHUNK_BYTES", 2 * 37 * 4)
    monkeypatch.setattr(checkpoint_data, "_READ_BYTES", 3 * 2 * 37 * 4)
    data = np.arange(100 * 37, dtype=np.float32).reshape(100, 37)
    src = dtc.create_mesh([("x", 8)])
    dtc.name_based_save(src, tmp_path / "ck", {
        "w": dtc.copy_to_mesh(data, dtc.Layout(["x", U], src))})
    assert {s.chunk_rows for s in load_index(str(tmp_path / "ck")).tensors["w"].slices} == {2}
    mesh = dtc.create_mesh([("a", 2), ("b", 4)])
    for layout in layouts(mesh, 2):
        target = dtc.copy_to_mesh(np.zeros_like(data), layout)
        out = dtc.name_based_restore(mesh, tmp_path / "ck", {"w": target})
        assert np.asarray(out["w"]).tobytes() == data.tobytes(), layout
    line = dtc.create_mesh([("a", 4)])  # blocks of 25 rows over slices of 13 (9 last)
    target = dtc.copy_to_mesh(np.zeros_like(data), dtc.Layout(["a", U], line))
    with checkpoint_data.counting() as stats:
        dtc.name_based_restore(line, tmp_path / "ck", {"w": target})
    # device 1, rows 25:50: row 12 of slice 1 (its last chunk, 1 row), slice 2 whole (13),
    # rows 0-10 of slice 3 (chunks 0-5, 12 rows); devices 0 and 3 need exactly their rows
    assert stats.read == {0: 25 * 148, 1: 26 * 148, 2: 26 * 148, 3: 25 * 148}


def test_whole_chunks_are_read_into_place_and_checked_there(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Saved {a, b} on 2x4 (slices of 12 x 4, chunks of 4 rows): restored {a, b}, each block
    is its slice, read into place without the read buffer, and a flipped byte is still
    found there. Restored {a, -} (each block holds 4 slices side by side) and {(a, b), -}
    (blocks of 3 rows cut chunks), chunks go through the buffer."""
    monkeypatch.setattr(checkpoint_data, "CHUNK_BYTES", 4 * 16)
    data = bits(2).repeat(3, axis=0)  # 24 x 16
    mesh = dtc.create_mesh(MESHES["2x4"])
    dtc.name_based_save(mesh, tmp_path / "ck", {
        "w": dtc.copy_to_mesh(data, dtc.Layout(["a", "b"], mesh))})
    buffered = []
    scratch = checkpoint_data._scratch
    monkeypatch.setattr(checkpoint_data, "_scratch", lambda n: buffered.append(n) or scratch(n))
    for specs, through_buffer in ((["a", "b"], False), (["a", U], True),
                                  ([("a", "b"), U], True)):
        buffered.clear()
        target = dtc.copy_to_mesh(np.zeros_like(data), dtc.Layout(specs, mesh))
        out = dtc.name_based_restore(mesh, tmp_path / "ck", {"w": target})
        assert np.asarray(out["w"]).tobytes() == data.tobytes(), specs
        assert bool(buffered) == through_buffer, specs
    s = next(s for s in load_index(str(tmp_path / "ck")).tensors["w"].slices
             if s.box.start == (12, 8))
    path = tmp_path / s.file
    raw = bytearray(path.read_bytes())
    raw[s.offset + 2 * 64 + 7] ^= 0x01  # chunk 2 of [12:24, 8:12]
    path.write_bytes(bytes(raw))
    target = dtc.copy_to_mesh(np.zeros_like(data), dtc.Layout(["a", "b"], mesh))
    with pytest.raises(dtc.CheckpointError, match=r"corrupt \(checksum mismatch in chunk 2 "
                                                  r"of \[12:24, 8:12\]\)"):
        dtc.name_based_restore(mesh, tmp_path / "ck", {"w": target})
