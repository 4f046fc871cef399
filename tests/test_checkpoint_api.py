"""The checkpoint API: name-based save and restore, sharded_save and its slice grammar, bf16,
DTensorCheckpoint with its load status and deferred restore, lowering without writing,
dtc.save inside a compiled function, async saves and the progress bar."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

import dtensor_compiler as dtc
from dtensor_compiler.checkpoint import inspect, progress, writer
from dtensor_compiler.ir.slice_spec import SliceSpec
from dtensor_compiler.runtime import checkpoint_data
from dtensor_compiler.runtime.checkpoint_index import load_index

U = dtc.UNSHARDED


@pytest.fixture
def mesh() -> dtc.Mesh:
    return dtc.create_mesh([("dp", 2), ("tp", 4)])


def put(array: np.ndarray, specs: list[str], mesh: dtc.Mesh) -> dtc.DTensor:
    return dtc.copy_to_mesh(array, dtc.Layout(specs, mesh))


def values(shape: tuple[int, ...], seed: int = 0, dtype: type = np.float32) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# -- name-based ---------------------------------------------------------------------------------

def test_name_based_round_trip_into_other_layouts(mesh: dtc.Mesh, tmp_path: Path) -> None:
    w, b, n = values((8, 16)), values((16,), 1), np.arange(6, dtype=np.int32).reshape(2, 3)
    assert dtc.name_based_save(mesh, tmp_path / "ck", {
        "w": put(w, ["dp", "tp"], mesh), "b": put(b, [U], mesh),
        "n": put(n, [U, U], mesh)}) is None
    templates = {"w": put(np.zeros_like(w), ["tp", U], mesh),
                 "b": put(np.zeros_like(b), ["tp"], mesh),
                 "n": put(np.zeros_like(n), [U, U], mesh)}
    restored = dtc.name_based_restore(mesh, tmp_path / "ck", templates)
    assert list(restored) == ["w", "b", "n"]
    for name, array in (("w", w), ("b", b), ("n", n)):
        assert restored[name].layout == templates[name].layout
        assert np.asarray(restored[name]).tobytes() == array.tobytes()
    assert not np.asarray(templates["w"]).any()  # the templates are not changed


def test_a_pending_sum_is_saved_reduced(mesh: dtc.Mesh, tmp_path: Path) -> None:
    parts = [np.full((4,), float(i % 4), np.float32) for i in range(8)]
    partial = dtc.pack(parts, dtc.Layout([U], mesh, partial={"tp": "sum"}))
    dtc.name_based_save(mesh, tmp_path / "ck", {"p": partial})
    out = dtc.name_based_restore(mesh, tmp_path / "ck", {"p": put(np.zeros(4, np.float32),
                                                                   [U], mesh)})
    np.testing.assert_array_equal(np.asarray(out["p"]), np.asarray(partial))


def test_restore_lists_every_mismatch(mesh: dtc.Mesh, tmp_path: Path) -> None:
    dtc.name_based_save(mesh, tmp_path / "ck", {"a": put(values((8, 4)), ["dp", U], mesh),
                                                "b": put(values((4,)), [U], mesh)})
    with pytest.raises(dtc.CheckpointError) as e:
        dtc.name_based_restore(mesh, tmp_path / "ck", {
            "a": put(np.zeros((8, 8), np.float32), [U, U], mesh),
            "b": put(np.zeros(4, np.int32), [U], mesh),
            "c": put(np.zeros(4, np.float32), [U], mesh)})
    message = str(e.value)
    assert "3 of 3 tensors do not match" in message
    assert "a: the checkpoint holds shape [8, 4], the target has [8, 8]" in message
    assert "b: the checkpoint holds f32, the target is i32" in message
    assert "c: not in the checkpoint" in message


def test_bad_arguments(mesh: dtc.Mesh, tmp_path: Path) -> None:
    other = dtc.create_mesh([("x", 8)])
    with pytest.raises(TypeError, match="'w' must be a DTensor or DVariable, got ndarray"):
        dtc.name_based_save(mesh, tmp_path / "ck", {"w": np.zeros(3)})
    with pytest.raises(dtc.LayoutError, match="'w' is on .*x=8.*not on"):
        dtc.name_based_save(mesh, tmp_path / "ck", {"w": put(np.zeros(8), ["x"], other)})
    for directory in (str(tmp_path) + "/", str(tmp_path) + "/.", str(tmp_path) + "/.."):
        with pytest.raises(ValueError, match="names a directory"):
            dtc.name_based_save(mesh, directory, {"w": put(np.zeros(8), [U], mesh)})
    with pytest.raises(TypeError, match="must be a path"):
        dtc.name_based_save(mesh, 3, {})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="names must be non-empty strings"):
        dtc.name_based_save(mesh, tmp_path / "ck", {"": put(np.zeros(8), [U], mesh)})
    with pytest.raises(dtc.CheckpointError, match="no checkpoint at .*missing"):
        dtc.name_based_restore(mesh, tmp_path / "missing", {})
    complex_ = {"c": put(np.zeros(8, np.complex128), [U], mesh)}
    for blocking in (True, False):  # refused by the call, before anything is written
        with pytest.raises(dtc.CheckpointError, match="c: dtype complex128 cannot be stored"):
            dtc.name_based_save(mesh, tmp_path / "c", complex_, blocking=blocking)
    assert not list(tmp_path.glob("c.*"))


def test_saving_a_prefix_again_replaces_it(mesh: dtc.Mesh, tmp_path: Path) -> None:
    prefix = tmp_path / "ck"
    dtc.name_based_save(mesh, prefix, {"w": put(np.ones((8, 4), np.float32), ["dp", U], mesh)})
    first = sorted(p.name for p in tmp_path.iterdir())
    dtc.name_based_save(mesh, prefix, {"w": put(np.full((8, 4), 2, np.float32), [U, "tp"],
                                                mesh)})
    writer.wait_for_saves()  # the old generation is removed in the background
    second = sorted(p.name for p in tmp_path.iterdir())
    assert first == ["ck.0.data-00000.safetensors", "ck.0.data-00004.safetensors",
                     "ck.index.json"]
    assert second == [f"ck.1.data-0000{d}.safetensors" for d in range(4)] + ["ck.index.json"]
    out = dtc.name_based_restore(mesh, prefix, {"w": put(np.zeros((8, 4), np.float32),
                                                         [U, U], mesh)})
    assert (np.asarray(out["w"]) == 2).all()


# -- sharded_save and the slice grammar ---------------------------------------------------------

@pytest.mark.parametrize("text, full, start, shape", [
    ("4 8 0,2:-", (4, 8), (0, 0), (2, 8)),
    ("3 4 5 1,2:-:0,2", (3, 4, 5), (1, 0, 0), (2, 4, 2)),
    ("2 1,1", (2,), (1,), (1,)),
    ("6 0,0", (6,), (0,), (0,)),
])
def test_slice_grammar(text: str, full: tuple[int, ...], start: tuple[int, ...],
                       shape: tuple[int, ...]) -> None:
    spec = SliceSpec.parse(text)
    assert spec == SliceSpec(full, start, shape)
    assert SliceSpec.parse(spec.text()) == spec
    assert SliceSpec.parse("") is None


@pytest.mark.parametrize("text, message", [
    ("4", "expected the full shape and a slice"),
    ("4 x 0,2:-", "dim 'x' of the full shape is not a non-negative integer"),
    ("4 8 0,2", "1 extents for a rank-2 shape"),
    ("4 8 0,2:1", "extent '1' of dim 1 is neither 'start,length' nor '-'"),
    ("4 8 0,-2:-", "extent '0,-2' of dim 0 is neither"),
    ("4 8 3,2:-", "extent '3,2' of dim 0 ends at 5, past its size 4"),
    ("4 \u00b2 -:-", "dim '\u00b2' of the full shape is not a non-negative integer"),
])
def test_slice_grammar_errors(text: str, message: str) -> None:
    with pytest.raises(dtc.SliceSpecError, match=message):
        SliceSpec.parse(text)


def test_sharded_save_of_slices(mesh: dtc.Mesh, tmp_path: Path) -> None:
    full = values((4, 8))
    top, bottom = put(full[:2], [U, "tp"], mesh), put(full[2:], ["dp", U], mesh)
    dtc.sharded_save(mesh, tmp_path / "ck", ["w", "w", "v"], ["4 8 0,2:-", "4 8 2,2:-", ""],
                     [top, bottom, put(full, [U, U], mesh)])
    index = json.loads((tmp_path / "ck.index.json").read_text())
    assert index["tensors"]["w"]["shape"] == [4, 8]
    assert sorted(tuple(s["start"]) for s in index["tensors"]["w"]["slices"]) == [
        (0, 0), (0, 2), (0, 4), (0, 6), (2, 0), (3, 0)]
    out = dtc.name_based_restore(mesh, tmp_path / "ck", {
        "w": put(np.zeros((4, 8), np.float32), ["tp", U], mesh),
        "v": put(np.zeros((4, 8), np.float32), [U, U], mesh)})
    assert np.asarray(out["w"]).tobytes() == full.tobytes() == np.asarray(out["v"]).tobytes()


def test_sharded_save_of_part_of_a_tensor(mesh: dtc.Mesh, tmp_path: Path) -> None:
    dtc.sharded_save(mesh, tmp_path / "ck", ["w"], ["4 8 0,2:-"],
                     [put(values((2, 8)), [U, U], mesh)])
    with pytest.raises(dtc.CheckpointError, match=r"w: the stored slices do not cover"):
        dtc.name_based_restore(mesh, tmp_path / "ck", {
            "w": put(np.zeros((4, 8), np.float32), [U, U], mesh)})


def test_sharded_save_errors(mesh: dtc.Mesh, tmp_path: Path) -> None:
    t = put(values((2, 8)), [U, U], mesh)
    with pytest.raises(dtc.SliceSpecError, match=r"'4 8 0,3:-' is a \[3, 8\] box; the tensor "
                                                 r"saved under it has shape \[2, 8\]"):
        dtc.sharded_save(mesh, tmp_path / "ck", ["w"], ["4 8 0,3:-"], [t])
    with pytest.raises(dtc.SliceSpecError, match="overlap"):
        dtc.sharded_save(mesh, tmp_path / "ck", ["w", "w"], ["4 8 0,2:-", "4 8 1,2:-"], [t, t])
    with pytest.raises(dtc.SliceSpecError, match="full shapes"):
        dtc.sharded_save(mesh, tmp_path / "ck", ["w", "w"], ["4 8 0,2:-", "6 8 2,2:-"], [t, t])
    with pytest.raises(ValueError, match="1 names, 2 shape_and_slices and 1 tensors"):
        dtc.sharded_save(mesh, tmp_path / "ck", ["w"], ["", ""], [t])
    assert not list(tmp_path.iterdir())


# -- bfloat16 -----------------------------------------------------------------------------------

def test_save_as_bf16(mesh: dtc.Mesh, tmp_path: Path) -> None:
    w = values((8, 4))
    var = dtc.DVariable(w, layout=dtc.Layout(["dp", U], mesh))
    ints = dtc.DVariable(np.arange(4), layout=dtc.Layout([U], mesh))
    dtc.enable_save_as_bf16([var, ints])
    assert var.save_as_bf16 and not ints.save_as_bf16
    dtc.name_based_save(mesh, tmp_path / "ck", {"w": var, "i": ints})
    index = json.loads((tmp_path / "ck.index.json").read_text())
    assert (index["tensors"]["w"]["dtype"], index["tensors"]["w"]["saved_from"]) == (
        "bfloat16", "float32")
    assert index["tensors"]["i"]["dtype"] == "int64"
    assert sum(s["nbytes"] for s in index["tensors"]["w"]["slices"]) == 8 * 4 * 2
    out = dtc.name_based_restore(mesh, tmp_path / "ck", {"w": var, "i": ints})
    assert out["w"].dtype == np.float32
    expected = w.astype(ml_dtypes.bfloat16).astype(np.float32)
    assert np.asarray(out["w"]).tobytes() == expected.tobytes()
    raw = dtc.name_based_restore(mesh, tmp_path / "ck", {
        "w": put(np.zeros((8, 4), ml_dtypes.bfloat16), [U, U], mesh)})
    assert raw["w"].dtype == ml_dtypes.bfloat16
    with pytest.raises(TypeError, match="expects DVariables"):
        dtc.enable_save_as_bf16([put(w, [U, U], mesh)])  # type: ignore[list-item]


# -- DTensorCheckpoint --------------------------------------------------------------------------

class Layer(dtc.AutoTrackable):
    def __init__(self, mesh: dtc.Mesh, seed: float) -> None:
        self.w = dtc.DVariable(np.full((8, 16), seed, np.float32),
                               layout=dtc.Layout(["dp", "tp"], mesh))
        self.b = dtc.DVariable(np.full((16,), seed, np.float32), layout=dtc.Layout([U], mesh))


class Model(dtc.AutoTrackable):
    def __init__(self, mesh: dtc.Mesh, seed: float) -> None:
        self.layers = [Layer(mesh, seed), Layer(mesh, seed + 1)]
        self.config = {"depth": 2}


NAMES = ["model/layers/0/w", "model/layers/0/b", "model/layers/1/w", "model/layers/1/b"]


def test_checkpoint_save_numbers_and_state(mesh: dtc.Mesh, tmp_path: Path) -> None:
    ckpt = dtc.DTensorCheckpoint(mesh, model=Model(mesh, 1))
    assert list(ckpt.variables()) == NAMES
    assert dtc.latest_checkpoint(tmp_path) is None
    assert ckpt.save(tmp_path / "ck") == str(tmp_path / "ck-1")
    assert ckpt.save(tmp_path / "ck") == str(tmp_path / "ck-2")
    assert int(ckpt.save_counter.numpy()) == 2
    assert dtc.latest_checkpoint(tmp_path) == str(tmp_path / "ck-2")
    state = json.loads((tmp_path / "checkpoint").read_text())
    assert state == {"latest": "ck-2", "all": ["ck-1", "ck-2"]}
    index = json.loads((tmp_path / "ck-2.index.json").read_text())
    assert sorted(index["tensors"]) == sorted(NAMES + ["save_counter"])
    assert ckpt.write(tmp_path / "plain") == str(tmp_path / "plain")
    assert "save_counter" not in json.loads((tmp_path / "plain.index.json").read_text())[
        "tensors"]
    assert dtc.latest_checkpoint(tmp_path) == str(tmp_path / "ck-2")


def test_checkpoint_restore_and_status(mesh: dtc.Mesh, tmp_path: Path) -> None:
    saved = dtc.DTensorCheckpoint(mesh, model=Model(mesh, 1))
    path = saved.save(tmp_path / "ck")
    saved.save(tmp_path / "ck")
    model = Model(mesh, 7)
    ckpt = dtc.DTensorCheckpoint(mesh, model=model)
    status = ckpt.restore(path)
    assert status.assert_consumed() is status
    assert status.assert_existing_objects_matched() is status
    assert status.assert_nontrivial_match() is status
    assert status.expect_partial() is status
    assert (np.asarray(model.layers[1].w) == 2).all()
    assert int(ckpt.save_counter.numpy()) == 1
    assert ckpt.save(tmp_path / "again") == str(tmp_path / "again-2")


def test_status_assertions_name_what_did_not_match(mesh: dtc.Mesh, tmp_path: Path) -> None:
    path = dtc.DTensorCheckpoint(mesh, model=Model(mesh, 1)).save(tmp_path / "ck")
    extra = dtc.DVariable(np.zeros(3, np.float32), layout=dtc.Layout([U], mesh))
    layer = Layer(mesh, 5)
    status = dtc.DTensorCheckpoint(mesh, model={"layers": [layer]}, extra=extra).restore(path)
    with pytest.raises(AssertionError, match=r"checkpoint values no variable took: "
                                             r"model/layers/1/b, model/layers/1/w; variables "
                                             r"the checkpoint has no value for: extra"):
        status.assert_consumed()
    with pytest.raises(AssertionError, match="no value for: extra"):
        status.assert_existing_objects_matched()
    status.assert_nontrivial_match()
    assert (np.asarray(layer.w) == 1).all()
    nothing = dtc.DTensorCheckpoint(mesh, other=extra).restore(path)
    with pytest.raises(AssertionError, match="no tracked variable matched"):
        nothing.assert_nontrivial_match()


def test_deferred_restore(mesh: dtc.Mesh, tmp_path: Path) -> None:
    path = dtc.DTensorCheckpoint(mesh, model=Model(mesh, 1)).save(tmp_path / "ck")

    class Empty(dtc.AutoTrackable):
        pass

    model = Empty()
    ckpt = dtc.DTensorCheckpoint(mesh, model=model)
    status = ckpt.restore(path)
    with pytest.raises(AssertionError):
        status.assert_consumed()
    model.layers = [Layer(mesh, 9), Layer(mesh, 9)]  # attached after the restore: restored now
    assert (np.asarray(model.layers[0].w) == 1).all()
    assert (np.asarray(model.layers[1].b) == 2).all()
    status.assert_consumed()

    late = dtc.DTensorCheckpoint(mesh)
    late.restore(path)
    late.model = {"layers": [Layer(mesh, 0)]}  # attached to the checkpoint itself
    assert (np.asarray(late.model["layers"][0].w) == 1).all()

    plain: dict[str, list[Layer]] = {}
    other = dtc.DTensorCheckpoint(mesh, model=plain)
    status = other.restore(path)
    plain["layers"] = [Layer(mesh, 0)]  # a dict cannot tell: run_restore_ops applies it
    assert (np.asarray(plain["layers"][0].w) == 0).all()
    status.run_restore_ops()
    assert (np.asarray(plain["layers"][0].w) == 1).all()


def test_a_root_is_tracked_as_it_is_at_each_save_and_restore(mesh: dtc.Mesh,
                                                              tmp_path: Path) -> None:
    """Attributes set on `root` after the checkpoint was made are saved, and restored into
    when they are attached later (an AutoTrackable root notices its assignments)."""
    source = Model(mesh, 1)
    ckpt = dtc.DTensorCheckpoint(mesh, root=source)
    source.head = Layer(mesh, 7)  # after the checkpoint was made
    path = ckpt.save(tmp_path / "ck")
    assert "head/w" in ckpt.variables()
    assert "head/w" in load_index(str(path)).tensors

    class Empty(dtc.AutoTrackable):
        pass

    target = Empty()
    status = dtc.DTensorCheckpoint(mesh, root=target).restore(path)
    target.head = Layer(mesh, 0)
    target.layers = [Layer(mesh, 0), Layer(mesh, 0)]
    assert (np.asarray(target.head.w) == 7).all() and (np.asarray(target.layers[1].b) == 2).all()
    status.assert_consumed()


def test_deferred_values_come_from_the_checkpoint_as_it_was_restored(mesh: dtc.Mesh,
                                                                     tmp_path: Path) -> None:
    """A value kept for a variable attached later is read when it is attached; if the prefix
    was saved again in between, that is refused, not mixed in."""
    dtc.DTensorCheckpoint(mesh, model=Model(mesh, 1)).write(tmp_path / "ck")

    class Empty(dtc.AutoTrackable):
        pass

    model = Empty()
    ckpt = dtc.DTensorCheckpoint(mesh, model=model)
    ckpt.read(tmp_path / "ck")
    dtc.DTensorCheckpoint(mesh, model=Model(mesh, 5)).write(tmp_path / "ck")
    with pytest.raises(dtc.CheckpointError, match=r"has been saved again since it was restored "
                                                  r"\(generation 0, now 1\)"):
        model.layers = [Layer(mesh, 0), Layer(mesh, 0)]
    assert (np.asarray(model.layers[0].w) == 0).all()


def test_the_counters_name_and_other_meshes_are_refused(mesh: dtc.Mesh, tmp_path: Path) -> None:
    class Holder(dtc.AutoTrackable):
        pass

    holder = Holder()
    holder.save_counter = dtc.DVariable(np.zeros(8, np.float32), layout=dtc.Layout([U], mesh))
    ckpt = dtc.DTensorCheckpoint(mesh, root=holder)
    with pytest.raises(ValueError, match="tracked as 'save_counter', which is the checkpoint's "
                                         "own counter"):
        ckpt.save(tmp_path / "ck")
    with pytest.raises(AttributeError, match="cannot set 'save_counter'"):
        dtc.DTensorCheckpoint(mesh).save_counter = Layer(mesh, 0).w
    path = dtc.DTensorCheckpoint(mesh, layer=Layer(mesh, 1)).save(tmp_path / "ok")
    line = dtc.create_mesh([("x", 8)])
    refused = dtc.DTensorCheckpoint(mesh, a=dtc.DVariable(np.zeros(4, np.complex128),
                                                          layout=dtc.Layout([U], mesh)))
    with pytest.raises(dtc.CheckpointError, match="cannot be stored"):
        refused.save(tmp_path / "refused")
    assert int(refused.save_counter.numpy()) == 0  # a refused save does not count
    elsewhere = {"w": dtc.DVariable(np.zeros((8, 16), np.float32),
                                    layout=dtc.Layout(["x", U], line))}
    with pytest.raises(ValueError, match=r"layer/w is on mesh<x=8>, the checkpoint on "
                                         r"mesh<dp=2, tp=4>"):
        dtc.DTensorCheckpoint(mesh, layer=elsewhere).restore(path)


def test_a_save_of_nothing_is_an_empty_checkpoint(mesh: dtc.Mesh, tmp_path: Path) -> None:
    dtc.name_based_save(mesh, tmp_path / "a", {})
    assert dtc.name_based_restore(mesh, tmp_path / "a", {}) == {}
    dtc.sharded_save(mesh, tmp_path / "b", [], [], [])
    handle = dtc.name_based_save(mesh, tmp_path / "c", {}, blocking=False)
    assert handle is not None
    handle.result()
    assert dtc.DTensorCheckpoint(mesh).write(tmp_path / "d") == str(tmp_path / "d")
    for name in "abcd":
        assert load_index(str(tmp_path / name)).tensors == {}
    assert "merge_index" in dtc.lower_name_based_save(mesh, tmp_path / "e", {}).ir()


def test_checkpoint_tracking_errors(mesh: dtc.Mesh, tmp_path: Path) -> None:
    layer = Layer(mesh, 0)
    with pytest.raises(ValueError, match="'x' is a ndarray, which a checkpoint cannot track"):
        dtc.DTensorCheckpoint(mesh, x=np.zeros(3))
    with pytest.raises(ValueError, match="root.w and the keyword argument 'w' are different"):
        dtc.DTensorCheckpoint(mesh, root=layer, w=Layer(mesh, 1).w)
    both = dtc.DTensorCheckpoint(mesh, root=layer, w=layer.w)
    assert list(both.variables()) == ["w", "b"]
    shared = dtc.DTensorCheckpoint(mesh, a=layer, b=[layer.w])
    assert list(shared.variables()) == ["a/w", "a/b"]
    with pytest.raises(dtc.CheckpointError, match="no checkpoint at"):
        both.restore(tmp_path / "nothing-here")
    with pytest.raises(AttributeError, match="cannot set 'n'"):
        both.n = 3
    with pytest.raises(AssertionError, match="no value for: b, w"):
        both.restore(None).assert_existing_objects_matched()


# -- lowering without writing ------------------------------------------------------------------

def test_lower_name_based_save_writes_nothing(mesh: dtc.Mesh, tmp_path: Path) -> None:
    tensors = {"w": put(values((8, 16)), ["dp", U], mesh), "b": put(values((16,)), [U], mesh)}
    low = dtc.lower_name_based_save(mesh, tmp_path / "ck", tensors)
    assert isinstance(low, dtc.CheckpointProgram)
    assert not list(tmp_path.iterdir())
    assert low.stages == ["input", "propagate-layouts", "expand-checkpoints",
                          "insert-collectives", "localize"]
    ir = low.ir()
    assert ir.count("  save_shard ") == 2 and "merge_index %w, %b" in ir
    assert [(w.device, w.nbytes) for w in low.writers()] == [(0, 320), (4, 256)]
    assert low.explain().startswith(
        "device  writes           bytes\n"
        "0       w[0:4, 0:16], b  320 B\n"
        "4       w[4:8, 0:16]     256 B\n"
        "total: 2 writers, 576 B\n")
    ckpt = dtc.DTensorCheckpoint(mesh, model=Model(mesh, 0))
    assert ckpt.lower_save(tmp_path / "x").ir().count("  save_shard ") == 8
    assert not list(tmp_path.iterdir())


def test_save_inside_a_compiled_function(mesh: dtc.Mesh, tmp_path: Path) -> None:
    prefix = str(tmp_path / "act")

    @dtc.compile(in_layouts=(dtc.Layout(["dp", U], mesh), dtc.Layout([U, "tp"], mesh)))
    def step(x: np.ndarray, w: np.ndarray) -> np.ndarray:
        h = x @ w
        dtc.save(prefix, {"h": h, "w2": w * 2})
        return h + 1

    x, w = values((8, 16)), values((16, 8), 1)
    ir = step.lower(x, w).ir("expand-checkpoints")
    assert ir.index("matmul") < ir.index("save_shard") < ir.index("merge_index")
    step(x, w)
    out = dtc.name_based_restore(mesh, prefix, {
        "h": put(np.zeros((8, 8), np.float32), [U, U], mesh),
        "w2": put(np.zeros((16, 8), np.float32), ["dp", U], mesh)})
    np.testing.assert_allclose(np.asarray(out["h"]), x @ w, rtol=1e-5)
    assert np.asarray(out["w2"]).tobytes() == (w * 2).tobytes()

    @dtc.compile
    def bad(x: np.ndarray) -> np.ndarray:
        dtc.save(prefix, {"x": x, "y": np.ones(3)})
        return x

    with pytest.raises(dtc.TraceError, match=r"test_checkpoint_api.py:\d+.*'y' is a ndarray"):
        bad(x)


def test_dtc_save_outside_a_compiled_function(mesh: dtc.Mesh, tmp_path: Path) -> None:
    dtc.save(tmp_path / "ck", {"w": put(values((8, 4)), ["dp", U], mesh)})
    assert json.loads((tmp_path / "ck.index.json").read_text())["tensors"]["w"]["layout"] == (
        "{dp, -}")


# -- async saves --------------------------------------------------------------------------------

def test_async_save_snapshots_values(mesh: dtc.Mesh, tmp_path: Path) -> None:
    var = dtc.DVariable(np.ones((8, 4), np.float32), layout=dtc.Layout(["dp", U], mesh))
    handle = dtc.name_based_save(mesh, tmp_path / "a", {"v": var}, blocking=False)
    assert isinstance(handle, dtc.SaveHandle)
    var.assign(np.full((8, 4), 5, np.float32))  # after the call: not in the checkpoint
    second = dtc.name_based_save(mesh, tmp_path / "a", {"v": var}, blocking=False)
    assert handle.result(timeout=60) == str(tmp_path / "a")
    assert second is not None and second.result(timeout=60) == str(tmp_path / "a")
    index = json.loads((tmp_path / "a.index.json").read_text())
    assert index["generation"] == 1  # the second save came after the first
    out = dtc.name_based_restore(mesh, tmp_path / "a", {"v": var})
    assert (np.asarray(out["v"]) == 5).all()

    ckpt = dtc.DTensorCheckpoint(mesh, v=var)
    pending = ckpt.save(tmp_path / "c", blocking=False)
    var.assign(np.zeros((8, 4), np.float32))
    assert isinstance(pending, dtc.SaveHandle)
    assert pending.result(timeout=60) == str(tmp_path / "c-1")
    ckpt.restore(tmp_path / "c-1")
    assert (np.asarray(var) == 5).all()
    assert dtc.latest_checkpoint(tmp_path) == str(tmp_path / "c-1")


def test_async_save_errors_surface_from_result(mesh: dtc.Mesh, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    gate = threading.Event()

    def failing(*args: object) -> None:
        gate.wait(10)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("dtensor_compiler.runtime.checkpoint_kernels.write_data_file", failing)
    handle = dtc.name_based_save(mesh, tmp_path / "ck", {"w": put(values((4,)), [U], mesh)},
                                 blocking=False)
    assert handle is not None and not handle.done()
    gate.set()
    with pytest.raises(OSError, match="No space left"):
        handle.result(timeout=60)
    assert not (tmp_path / "ck.index.json").exists()


# -- progress -----------------------------------------------------------------------------------

def test_progress_bar(mesh: dtc.Mesh, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                      monkeypatch: pytest.MonkeyPatch) -> None:
    w = put(values((256, 256)), ["dp", U], mesh)
    dtc.name_based_save(mesh, tmp_path / "quiet", {"w": w})
    assert capsys.readouterr().err == ""
    dtc.name_based_save(mesh, tmp_path / "loud", {"w": w}, progress=True)
    err = capsys.readouterr().err
    assert "saving" in err and "256k" in err.replace("256.0k", "256k")
    assert not progress.wanted(None, 1 << 30)  # stderr is not a terminal here
    assert progress.wanted(True, 0) and not progress.wanted(False, 1 << 40)
    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    monkeypatch.setenv("DTC_PROGRESS", "0")
    assert not progress.wanted(None, 1 << 30)


def test_io_is_counted(mesh: dtc.Mesh, tmp_path: Path) -> None:
    with checkpoint_data.counting() as stats:
        dtc.name_based_save(mesh, tmp_path / "ck", {"w": put(values((8, 16)), ["dp", U],
                                                             mesh)})
    assert set(stats.written) == {0, 4}
    assert sum(stats.written.values()) == sum(p.stat().st_size for p in tmp_path.glob("*.data-*"))


# -- regressions found by adversarial testing --------------------------------------------------

def test_two_variables_with_one_path_are_refused(mesh: dtc.Mesh) -> None:
    v = dtc.DVariable(np.zeros(2, np.float32), layout=dtc.Layout([U], mesh))
    w = dtc.DVariable(np.ones(2, np.float32), layout=dtc.Layout([U], mesh))
    with pytest.raises(ValueError, match="two different variables would be saved as 'm/a/b'"):
        dtc.DTensorCheckpoint(mesh, m={"a/b": v, "a": {"b": w}}).variables()


def test_a_back_reference_to_the_root_does_not_rename(mesh: dtc.Mesh) -> None:
    root = Layer(mesh, 0)
    root.child = {"up": root}
    assert list(dtc.DTensorCheckpoint(mesh, root=root).variables()) == ["w", "b"]


def test_sharded_save_refuses_slices_in_two_dtypes(mesh: dtc.Mesh, tmp_path: Path) -> None:
    a = dtc.DVariable(values((2, 3)), layout=dtc.Layout([U, U], mesh))
    b = dtc.DVariable(values((2, 3), 1), layout=dtc.Layout([U, U], mesh))
    dtc.enable_save_as_bf16([a])
    with pytest.raises(ValueError, match="some slices of 'x' are saved as bfloat16"):
        dtc.sharded_save(mesh, tmp_path / "ck", ["x", "x"], ["4 3 0,2:-", "4 3 2,2:-"], [a, b])


def test_compiled_save_and_async_save_of_one_prefix(mesh: dtc.Mesh, tmp_path: Path) -> None:
    prefix = str(tmp_path / "ck")
    big = put(values((1024, 1024)), ["dp", "tp"], mesh)

    @dtc.compile(in_layouts=dtc.Layout(["dp", U], mesh))
    def step(x: np.ndarray) -> np.ndarray:
        dtc.save(prefix, {"x": x})
        return x * 2

    for i in range(3):
        handle = dtc.name_based_save(mesh, prefix, {"big": big}, blocking=False)
        step(values((8, 4), i))
        assert handle is not None
        handle.result(timeout=60)
    assert inspect.verify(prefix) == []
    index = json.loads((tmp_path / "ck.index.json").read_text())
    assert index["generation"] == 5
