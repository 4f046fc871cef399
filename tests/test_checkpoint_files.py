"""Checkpoint files: the safetensors data files and the index, who writes what, corruption,
truncation and missing files, saves killed at several points, concurrent saves, and `dtc ckpt`
as a subprocess."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

import dtensor_compiler as dtc
from dtensor_compiler.checkpoint import inspect, writer

U = dtc.UNSHARDED
MESH_DIMS = [("dp", 2), ("tp", 4)]


@pytest.fixture
def mesh() -> dtc.Mesh:
    return dtc.create_mesh(MESH_DIMS)


def saved(mesh: dtc.Mesh, prefix: Path) -> dict[str, np.ndarray]:
    """Save w {dp, tp}, b replicated and n {-, dp}; returns the global values."""
    data = {"w": np.arange(8 * 16, dtype=np.float32).reshape(8, 16),
            "b": np.linspace(-1, 1, 16, dtype=np.float32),
            "n": np.arange(12, dtype=np.int64).reshape(3, 4)}
    dtc.name_based_save(mesh, prefix, {
        "w": dtc.copy_to_mesh(data["w"], dtc.Layout(["dp", "tp"], mesh)),
        "b": dtc.copy_to_mesh(data["b"], dtc.Layout([U], mesh)),
        "n": dtc.copy_to_mesh(data["n"], dtc.Layout([U, "dp"], mesh))})
    return data


def restore(mesh: dtc.Mesh, prefix: Path, data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    templates = {k: dtc.copy_to_mesh(np.zeros_like(v), dtc.Layout([U] * v.ndim, mesh))
                 for k, v in data.items()}
    return {k: np.asarray(v) for k, v in dtc.name_based_restore(mesh, prefix, templates).items()}


def test_data_files_are_plain_safetensors(mesh: dtc.Mesh, tmp_path: Path) -> None:
    data = saved(mesh, tmp_path / "ck")
    files = sorted(tmp_path.glob("ck.0.data-*.safetensors"))
    assert [f.name[-17:-12] for f in files] == [f"{d:05d}" for d in range(8)]
    first = load_file(files[0])
    assert sorted(first) == ["b@0", "n@0,0", "w@0,0"]
    np.testing.assert_array_equal(first["w@0,0"], data["w"][:4, :4])
    np.testing.assert_array_equal(first["b@0"], data["b"])
    np.testing.assert_array_equal(first["n@0,0"], data["n"][:, :2])
    assert sorted(load_file(files[4])) == ["n@0,2", "w@4,0"]
    assert sorted(load_file(files[5])) == ["w@4,4"]


def test_the_index(mesh: dtc.Mesh, tmp_path: Path) -> None:
    saved(mesh, tmp_path / "ck")
    index = json.loads((tmp_path / "ck.index.json").read_text())
    assert (index["format"], index["version"], index["generation"]) == (
        "dtensor-compiler-checkpoint", 1, 0)
    w = index["tensors"]["w"]
    assert (w["dtype"], w["shape"], w["layout"], w["mesh"], w["saved_from"]) == (
        "float32", [8, 16], "{dp, tp}", "mesh<dp=2, tp=4>", None)
    assert len(w["slices"]) == 8
    s = next(s for s in w["slices"] if s["start"] == [4, 12])
    assert (s["shape"], s["file"], s["nbytes"]) == ([4, 4], "ck.0.data-00007.safetensors", 64)
    raw = (tmp_path / s["file"]).read_bytes()[s["offset"]:s["offset"] + s["nbytes"]]
    assert raw == np.arange(128, dtype=np.float32).reshape(8, 16)[4:, 12:].tobytes()
    assert s["crc32"] == [zlib.crc32(raw)]
    assert index["files"] == {f.name: f.stat().st_size for f in tmp_path.glob("*.data-*")}


def test_the_checksum_is_zlibs_crc32() -> None:
    """Checkpoints stay readable without the accelerated implementation (and by other
    tools): whichever one is installed computes zlib's crc32 of any slice of memory."""
    from dtensor_compiler.runtime import checksum

    pytest.importorskip("zlib_ng")  # the test extra installs it
    assert checksum.IMPLEMENTATION == "zlib_ng.zlib_ng"
    data = np.random.default_rng(0).integers(0, 256, 3 << 20, dtype=np.uint8).data
    for a, b in [(0, 0), (0, 1), (3, 100), (1, 3 << 20), (4097, (2 << 20) + 5)]:
        assert checksum.crc32(data[a:b]) == zlib.crc32(data[a:b])


@pytest.mark.parametrize("damage, message", [
    ("flip", r"w: data file .*ck\.0\.data-00003\.safetensors is corrupt \(checksum mismatch "
             r"in chunk 0 of \[0:4, 12:16\]\)"),
    ("truncate", r"w: data file .*ck\.0\.data-00003\.safetensors is truncated"),
    ("delete", r"w: data file .*ck\.0\.data-00003\.safetensors is missing"),
])
def test_damaged_data_files(mesh: dtc.Mesh, tmp_path: Path, damage: str, message: str) -> None:
    data = saved(mesh, tmp_path / "ck")
    index = json.loads((tmp_path / "ck.index.json").read_text())
    s = next(s for s in index["tensors"]["w"]["slices"] if s["start"] == [0, 12])
    path = tmp_path / s["file"]
    if damage == "flip":
        raw = bytearray(path.read_bytes())
        raw[s["offset"] + 5] ^= 0x10
        path.write_bytes(bytes(raw))
    elif damage == "truncate":
        os.truncate(path, s["offset"] + 10)
    else:
        path.unlink()
    with pytest.raises(dtc.CheckpointError, match=message):
        restore(mesh, tmp_path / "ck", data)
    # the tensors that do not touch the damaged file still restore
    assert restore(mesh, tmp_path / "ck", {"b": data["b"]})["b"].tobytes() == data["b"].tobytes()


@pytest.mark.parametrize("text, message", [
    ("{", r"ck\.index\.json is not a valid checkpoint index \(JSONDecodeError"),
    ('{"format": "other"}', "is not a dtensor-compiler checkpoint index"),
    ('{"format": "dtensor-compiler-checkpoint", "version": 9}', "has version 9"),
    ('{"format": "dtensor-compiler-checkpoint", "version": 1}', "KeyError"),
])
def test_bad_index(mesh: dtc.Mesh, tmp_path: Path, text: str, message: str) -> None:
    data = saved(mesh, tmp_path / "ck")
    (tmp_path / "ck.index.json").write_text(text)
    with pytest.raises(dtc.CheckpointError, match=message):
        restore(mesh, tmp_path / "ck", data)


def test_overlapping_slices_in_an_index_are_refused(mesh: dtc.Mesh, tmp_path: Path) -> None:
    data = saved(mesh, tmp_path / "ck")
    path = tmp_path / "ck.index.json"
    index = json.loads(path.read_text())
    w = index["tensors"]["w"]["slices"]
    w[1] = dict(w[0])  # the same box twice, one box missing: the volumes still add up
    path.write_text(json.dumps(index))
    with pytest.raises(dtc.CheckpointError, match=r"the slices \[0:4, 0:4\] and \[0:4, 0:4\] "
                                                  r"of 'w' overlap"):
        restore(mesh, tmp_path / "ck", data)
    done = dtc_cli("verify", str(tmp_path / "ck"))
    assert done.returncode == 1 and "overlap" in done.stderr


@pytest.mark.parametrize("field, value, message", [
    ("chunk_rows", -1, r"the chunk rows of slice \[0:4, 0:4\] is -1, not a whole number"),
    ("chunk_rows", 0, r"has 1 checksums in chunks of 0 rows, not one per chunk"),
    ("chunk_rows", 1, r"has 1 checksums in chunks of 1 rows, not one per chunk"),
    ("offset", -8, r"a slice's offset is -8"),
    ("start", [0.5, 0], r"a slice's start is 0\.5"),
    ("nbytes", 4, r"has 4 bytes, not the 64 of its box"),
    ("file", "../../elsewhere.safetensors", r"is not the name of a data file beside it"),
    ("file", "ck.7.data-00000.safetensors", r"which the index does not list among its files"),
    ("dtype", "float33", r"stores dtype 'float33' for 'w'"),
])
def test_an_index_that_contradicts_itself_is_refused_by_restore_and_verify(
        mesh: dtc.Mesh, tmp_path: Path, field: str, value: object, message: str) -> None:
    """Every field of a slice (and a tensor's dtype) is checked before any byte is read:
    a negative chunk size made the restore skip its rows, leaving them unwritten, and
    verify call the checkpoint sound."""
    data = saved(mesh, tmp_path / "ck")
    path = tmp_path / "ck.index.json"
    index = json.loads(path.read_text())
    w = index["tensors"]["w"]
    if field == "dtype":
        w["dtype"] = value
    else:
        next(s for s in w["slices"] if s["start"] == [0, 0])[field] = value
    path.write_text(json.dumps(index))
    with pytest.raises(dtc.CheckpointError, match=f"ck.index.json: .*{message}"):
        restore(mesh, tmp_path / "ck", data)
    done = dtc_cli("verify", str(tmp_path / "ck"))
    assert done.returncode == 1 and re.search(message, done.stderr), done.stderr


def test_export_refuses_a_tensor_named_metadata(mesh: dtc.Mesh, tmp_path: Path) -> None:
    dtc.name_based_save(mesh, tmp_path / "ck", {
        "__metadata__": dtc.copy_to_mesh(np.zeros(4, np.float32), dtc.Layout([U], mesh))})
    done = dtc_cli("export", str(tmp_path / "ck"), str(tmp_path / "out.safetensors"))
    assert done.returncode == 1 and "safetensors reserves that key" in done.stderr
    assert not (tmp_path / "out.safetensors").exists()


# -- crashes ------------------------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    import dtensor_compiler as dtc
    from dtensor_compiler.runtime import checkpoint_index, checkpoint_kernels

    prefix, point = sys.argv[1], sys.argv[2]
    mesh = dtc.create_mesh([("dp", 2), ("tp", 4)])

    def save(value):
        w = dtc.copy_to_mesh(np.full((64, 64), value, np.float32), dtc.Layout(["dp", "tp"], mesh))
        b = dtc.copy_to_mesh(np.full((64,), value, np.float32), dtc.Layout(["unsharded"], mesh))
        dtc.name_based_save(mesh, prefix, {"w": w, "b": b})

    def die(*args):
        os.kill(os.getpid(), signal.SIGKILL)

    def after(f, calls):
        count = [0]
        def wrapped(*args, **kwargs):
            out = f(*args, **kwargs)
            count[0] += 1
            if count[0] == calls:
                die()
            return out
        return wrapped

    if point == "loop":
        value = 1
        while True:
            save(float(value))
            value += 1
    save(1.0)
    if point == "first-data-file":
        checkpoint_kernels.write_data_file = after(checkpoint_kernels.write_data_file, 1)
    elif point == "all-data-files":
        checkpoint_kernels.commit = die
    elif point == "index-fsynced":
        checkpoint_index.os.replace = die
    elif point == "committed":
        checkpoint_index.fsync_directory = after(checkpoint_index.fsync_directory, 1)
    save(2.0)
""")


def run_child(tmp_path: Path, point: str) -> subprocess.Popen[bytes]:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    return subprocess.Popen([sys.executable, str(script), str(tmp_path / "ck"), point],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def uniform_value(mesh: dtc.Mesh, prefix: Path) -> float:
    out = restore(mesh, prefix, {"w": np.zeros((64, 64), np.float32),
                                 "b": np.zeros(64, np.float32)})
    values = set(np.unique(out["w"])) | set(np.unique(out["b"]))
    assert len(values) == 1, f"a mix of saves: {sorted(values)}"
    return float(values.pop())


@pytest.mark.parametrize("point, expected", [
    ("first-data-file", 1.0), ("all-data-files", 1.0), ("index-fsynced", 1.0),
    ("committed", 2.0)])
def test_a_save_killed_at_any_point(mesh: dtc.Mesh, tmp_path: Path, point: str,
                                    expected: float) -> None:
    child = run_child(tmp_path, point)
    _, err = child.communicate(timeout=120)
    assert child.returncode == -signal.SIGKILL, err.decode()
    assert uniform_value(mesh, tmp_path / "ck") == expected
    assert inspect.verify(str(tmp_path / "ck")) == []
    # the next save clears what the killed one left behind
    dtc.name_based_save(mesh, tmp_path / "ck", {
        "w": dtc.copy_to_mesh(np.full((64, 64), 3, np.float32), dtc.Layout([U, U], mesh)),
        "b": dtc.copy_to_mesh(np.full((64,), 3, np.float32), dtc.Layout([U], mesh))})
    index = json.loads((tmp_path / "ck.index.json").read_text())
    writer.wait_for_saves()  # the stale files are removed in the background
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("ck")) == sorted(
        list(index["files"]) + ["ck.index.json"])
    assert uniform_value(mesh, tmp_path / "ck") == 3.0


def test_saves_killed_at_random_moments(mesh: dtc.Mesh, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    committed = []
    for delay in rng.uniform(1.5, 3.0, 3):
        child = run_child(tmp_path, "loop")
        time.sleep(delay)
        child.kill()
        child.communicate(timeout=60)
        if (tmp_path / "ck.index.json").exists():
            committed.append(uniform_value(mesh, tmp_path / "ck"))
    assert committed and min(committed) >= 1.0


def test_concurrent_saves_to_different_prefixes(mesh: dtc.Mesh, tmp_path: Path) -> None:
    script = tmp_path / "saver.py"
    script.write_text(textwrap.dedent("""
        import sys
        import numpy as np
        import dtensor_compiler as dtc
        mesh = dtc.create_mesh([("dp", 2), ("tp", 4)])
        prefix, value = sys.argv[1], float(sys.argv[2])
        for i in range(5):
            w = dtc.copy_to_mesh(np.full((64, 64), value + i, np.float32),
                                 dtc.Layout(["dp", "tp"], mesh))
            b = dtc.copy_to_mesh(np.full((64,), value + i, np.float32), dtc.Layout(["unsharded"], mesh))
            dtc.name_based_save(mesh, prefix, {"w": w, "b": b})
    """))
    names = {"ck": 10.0, "ck-1": 20.0, "ck.1": 30.0}
    children = [subprocess.Popen([sys.executable, str(script), str(tmp_path / n), str(v)])
                for n, v in names.items()]
    for child in children:
        assert child.wait(timeout=120) == 0
    for name, value in names.items():
        assert uniform_value(mesh, tmp_path / name) == value + 4


# -- dtc ckpt -----------------------------------------------------------------------------------

def dtc_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dtensor_compiler.cli", "ckpt", *args],
                          capture_output=True, text=True, timeout=120)


def test_dtc_ckpt_ls_verify_export(mesh: dtc.Mesh, tmp_path: Path) -> None:
    data = saved(mesh, tmp_path / "ck")
    ls = dtc_cli("ls", str(tmp_path / "ck"))
    assert ls.returncode == 0, ls.stderr
    assert ls.stdout.splitlines() == [
        "tensor  dtype    shape   layout    slices  size",
        "b       float32  [16]    {-}       1       64 B",
        "n       int64    [3,4]   {-, dp}   2       96 B",
        "w       float32  [8,16]  {dp, tp}  8       512 B",
        "3 tensors, 672 B, saved on mesh<dp=2, tp=4>"]
    slices = dtc_cli("ls", str(tmp_path / "ck"), "--slices").stdout
    assert "w       [4:8, 12:16]  ck.0.data-00007.safetensors" in slices
    ok = dtc_cli("verify", str(tmp_path / "ck"))
    assert (ok.returncode, ok.stdout) == (0, f"{tmp_path / 'ck'}: ok (3 tensors in 8 files, "
                                             "every checksum verified)\n")

    single = dtc_cli("export", str(tmp_path / "ck"), str(tmp_path / "all.safetensors"))
    assert single.returncode == 0, single.stderr
    loaded = load_file(tmp_path / "all.safetensors")
    assert {k: v.tobytes() for k, v in loaded.items()} == {k: v.tobytes()
                                                           for k, v in data.items()}
    sharded = dtc_cli("export", str(tmp_path / "ck"), str(tmp_path / "hf"),
                      "--max-shard-size", "600B")
    assert sharded.returncode == 0, sharded.stderr
    index = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())
    assert index == {"metadata": {"total_size": 672}, "weight_map": {
        "b": "model-00001-of-00002.safetensors", "n": "model-00001-of-00002.safetensors",
        "w": "model-00002-of-00002.safetensors"}}
    np.testing.assert_array_equal(
        load_file(tmp_path / "hf" / "model-00002-of-00002.safetensors")["w"], data["w"])

    raw = bytearray((tmp_path / "ck.0.data-00005.safetensors").read_bytes())
    raw[-3] ^= 1
    (tmp_path / "ck.0.data-00005.safetensors").write_bytes(bytes(raw))
    bad = dtc_cli("verify", str(tmp_path / "ck"))
    assert bad.returncode == 1
    assert bad.stdout.splitlines()[0].startswith(
        "CORRUPT: w: data file ") and "ck.0.data-00005.safetensors is corrupt" in bad.stdout
    failed = dtc_cli("export", str(tmp_path / "ck"), str(tmp_path / "again.safetensors"))
    assert failed.returncode == 1 and "is corrupt" in failed.stderr
    assert not list(tmp_path.glob("*again*"))  # nothing half-written


def test_dtc_ckpt_export_paths(mesh: dtc.Mesh, tmp_path: Path) -> None:
    """A file export makes its missing parents as a directory export does; an OUT that
    names no file is a usage error; an existing directory is refused before anything is
    written."""
    data = saved(mesh, tmp_path / "ck")
    nested = tmp_path / "new" / "dirs" / "all.safetensors"
    done = dtc_cli("export", str(tmp_path / "ck"), str(nested))
    assert done.returncode == 0, done.stderr
    assert load_file(nested)["w"].tobytes() == data["w"].tobytes()
    root = dtc_cli("export", str(tmp_path / "ck"), "/")
    assert root.returncode == 2 and "cannot export to '/'" in root.stderr, root.stderr
    taken = dtc_cli("export", str(tmp_path / "ck"), str(tmp_path))
    assert taken.returncode == 1 and "already exists" in taken.stderr
    assert not list(tmp_path.glob(".*tmp-*"))


def test_dtc_ckpt_usage_errors(tmp_path: Path) -> None:
    missing = dtc_cli("ls", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "no checkpoint at" in missing.stderr
    assert dtc_cli("export", str(tmp_path / "nope"), "x", "--max-shard-size", "lots"
                   ).returncode == 2
    assert dtc_cli("frobnicate").returncode == 2
