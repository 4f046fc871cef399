"""Port of the reference's save_restore_v2_test.py to dtensor_compiler.

The reference saves DVariables with `tf.train.Checkpoint` (and a `CheckpointManager`) on a
2x4 CPU mesh; here the checkpoint is `dtc.DTensorCheckpoint`, and the manager is emulated
with `DTensorCheckpoint.save` under one directory plus `dtc.latest_checkpoint`.
"""

from __future__ import annotations

import numpy as np
import pytest

import dtensor_compiler as dtc

U = dtc.UNSHARDED

# the reference's _TWO_D_CPU_MESH: dims x=2, y=4, every device local
_IDS = np.arange(8).reshape((2, 4))
MESH = dtc.Mesh(["x", "y"], _IDS, _IDS.ravel().tolist(),
                [f"/job:localhost/replica:0/task:0/device:CPU:{i}" for i in range(8)])

SHARD_SPECS = {
    "x_unsharded": ["x", U],
    "unsharded_x": [U, "x"],
    "x_y": ["x", "y"],
    "unsharded_unsharded": [U, U],
}
ALL_SPECS = pytest.mark.parametrize("shard_spec", list(SHARD_SPECS.values()),
                                    ids=list(SHARD_SPECS))


def _uniform(shape: tuple[int, ...], seed: int = 1) -> np.ndarray:
    """Stand-in for the reference's stateless_random_uniform: fixed-seed float32 in [0, 1)."""
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def _assert_dtensor_equal(expected: np.ndarray, layout: dtc.Layout, value: object) -> None:
    """The reference's assertDTensorEqual: same layout, same global value, and every device
    holds its block of the expected value."""
    assert dtc.fetch_layout(value) == layout
    np.testing.assert_array_equal(np.asarray(value), expected)
    want = dtc.unpack(dtc.copy_to_mesh(np.asarray(expected), layout))
    got = dtc.unpack(value.read_value() if isinstance(value, dtc.DVariable) else value)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


def _pack(array: np.ndarray, layout: dtc.Layout) -> dtc.DTensor:
    """The reference's numpy_util.pack_numpy: lay a global array out as `layout`."""
    return dtc.copy_to_mesh(np.asarray(array, np.float32), layout)


@ALL_SPECS
def test_checkpoint_simple(tmp_path, shard_spec):
    # reference: save_restore_v2_test.py DTensorSaveRestoreV2Test.test_checkpoint_simple
    tensor_a = _uniform((4, 8))
    tensor_b = _uniform((2, 4))
    layout = dtc.Layout(shard_spec, MESH)
    var_a = dtc.DVariable(_pack(tensor_a, layout))
    var_b = dtc.DVariable(_pack(tensor_b, layout))

    ckpt = dtc.DTensorCheckpoint(MESH, a=var_a, b=var_b)
    # the reference passes its (existing) temp directory itself as the prefix
    prefix = tmp_path / "tmpdir"
    prefix.mkdir()
    saved_path = ckpt.save(str(prefix))
    assert saved_path == f"{prefix}-1"

    var_a.assign(_pack(np.zeros((4, 8)), layout))
    var_b.assign(_pack(np.zeros((2, 4)), layout))

    ckpt.restore(saved_path)

    _assert_dtensor_equal(tensor_a, layout, var_a.read_value())
    _assert_dtensor_equal(tensor_b, layout, var_b.read_value())


@ALL_SPECS
def test_checkpoint_write(tmp_path, shard_spec):
    # reference: save_restore_v2_test.py DTensorSaveRestoreV2Test.test_checkpoint_write
    tensor_a = _uniform((4, 8))
    tensor_b = _uniform((2, 4))
    layout = dtc.Layout(shard_spec, MESH)
    var_a = dtc.DVariable(_pack(tensor_a, layout))
    var_b = dtc.DVariable(_pack(tensor_b, layout))

    ckpt = dtc.DTensorCheckpoint(MESH, a=var_a, b=var_b)
    prefix = tmp_path / "tmpdir"
    prefix.mkdir()
    saved_path = ckpt.write(str(prefix))
    assert saved_path == str(prefix)  # write() uses the prefix as given, no counter

    var_a.assign(_pack(np.zeros((4, 8)), layout))
    var_b.assign(_pack(np.zeros((2, 4)), layout))

    # as in the reference, the write()-made checkpoint is read back with restore()
    ckpt.restore(saved_path)

    _assert_dtensor_equal(tensor_a, layout, var_a.read_value())
    _assert_dtensor_equal(tensor_b, layout, var_b.read_value())


@ALL_SPECS
def test_checkpoint_manager(tmp_path, shard_spec):
    # reference: save_restore_v2_test.py DTensorSaveRestoreV2Test.test_checkpoint_manager
    # (CheckpointManager(ckpt, dir).save() is emulated as ckpt.save(dir/"ckpt"), the
    # manager's naming; the directory's latest checkpoint must be that save)
    tensor_a = _uniform((8, 16))
    tensor_b = _uniform((4, 4))
    layout = dtc.Layout(shard_spec, MESH)
    var_a = dtc.DVariable(_pack(tensor_a, layout))
    var_b = dtc.DVariable(_pack(tensor_b, layout))

    ckpt = dtc.DTensorCheckpoint(MESH, a=var_a, b=var_b)
    assert dtc.latest_checkpoint(tmp_path) is None
    saved_path = ckpt.save(tmp_path / "ckpt")
    assert saved_path == str(tmp_path / "ckpt-1")
    assert dtc.latest_checkpoint(tmp_path) == saved_path

    var_a.assign(_pack(np.zeros((8, 16)), layout))
    var_b.assign(_pack(np.zeros((4, 4)), layout))

    ckpt.restore(saved_path)

    _assert_dtensor_equal(tensor_a, layout, var_a.read_value())
    _assert_dtensor_equal(tensor_b, layout, var_b.read_value())


@ALL_SPECS
def test_checkpoint_restore_with_different_layout(tmp_path, shard_spec):
    # reference: save_restore_v2_test.py
    #   DTensorSaveRestoreV2Test.test_checkpoint_restore_with_different_layout
    tensor_a = _uniform((4, 8))
    tensor_b = _uniform((2, 4))
    layout = dtc.Layout(shard_spec, MESH)
    var_a = dtc.DVariable(_pack(tensor_a, layout))
    var_b = dtc.DVariable(_pack(tensor_b, layout))

    checkpoint_1 = dtc.DTensorCheckpoint(MESH, a=var_a, b=var_b)
    prefix = tmp_path / "tmpdir"
    prefix.mkdir()
    saved_path = checkpoint_1.save(str(prefix))

    # fresh zero variables in another layout than the one saved
    new_layout = dtc.Layout(["x", "y"], MESH)
    var_a = dtc.DVariable(_pack(np.zeros((4, 8)), new_layout))
    var_b = dtc.DVariable(_pack(np.zeros((2, 4)), new_layout))

    checkpoint_2 = dtc.DTensorCheckpoint(MESH, a=var_a, b=var_b)
    checkpoint_2.restore(saved_path)

    _assert_dtensor_equal(tensor_a, new_layout, var_a.read_value())
    _assert_dtensor_equal(tensor_b, new_layout, var_b.read_value())


class _Model(dtc.AutoTrackable):
    """The reference's module M: a replicated and a sharded variable, and a call that
    reads both (``m(x)``, as a tf.Module is called)."""

    def __init__(self, replicated_value: dtc.DTensor, sharded_value: dtc.DTensor) -> None:
        self.r = dtc.DVariable(replicated_value)
        self.s = dtc.DVariable(sharded_value)

    def __call__(self, x: dtc.DTensor) -> dtc.DTensor:
        return _model_sum(self.r.layout, self.s.layout)(x, self.r, self.s)


class _ModelWithoutCall(dtc.AutoTrackable):
    """`_Model` without ``__call__`` (``m.apply(x)``): isolates the tracking of callable
    objects from the rest of the train loop."""

    def __init__(self, replicated_value: dtc.DTensor, sharded_value: dtc.DTensor) -> None:
        self.r = dtc.DVariable(replicated_value)
        self.s = dtc.DVariable(sharded_value)

    def apply(self, x: dtc.DTensor) -> dtc.DTensor:
        return _model_sum(self.r.layout, self.s.layout)(x, self.r, self.s)


_SUMS: dict[tuple[dtc.Layout, dtc.Layout], dtc.CompiledFunction] = {}


def _model_sum(r_layout: dtc.Layout, s_layout: dtc.Layout) -> dtc.CompiledFunction:
    """M's computation, sum(x + r) + sum(x + s), as a compiled function."""
    key = (r_layout, s_layout)
    if key not in _SUMS:
        _SUMS[key] = dtc.compile(
            lambda x, r, s: np.sum(x + r) + np.sum(x + s),
            in_layouts=(dtc.Layout.replicated(MESH, 0), r_layout, s_layout),
            out_layouts=dtc.Layout.replicated(MESH, 0))
    return _SUMS[key]


def _train_loop(directory, shard_dims, make_model, call) -> None:
    """Every epoch builds a new model and a new checkpoint, restores the directory's latest
    checkpoint (none in the first epoch), checks that it holds `epoch` increments, adds one
    and saves checkpoint number epoch + 1 (the emulated CheckpointManager.save)."""
    sharded_np = np.arange(8).reshape((2, 4)).astype(np.float32)
    replicated_np = np.arange(16).reshape((8, 2)).astype(np.float32)

    replicated_layout = dtc.Layout.replicated(MESH, rank=2)
    sharded_layout = dtc.Layout(shard_dims, MESH)

    replicated_value = dtc.copy_to_mesh(replicated_np, replicated_layout)
    replicated_zeros = dtc.copy_to_mesh(np.zeros((8, 2), np.float32), replicated_layout)
    sharded_value = _pack(sharded_np, sharded_layout)
    sharded_zeros = _pack(np.zeros((2, 4)), sharded_layout)

    for epoch in range(5):
        m = make_model(replicated_value, sharded_value)
        ckpt = dtc.DTensorCheckpoint(MESH, model=m)
        latest = dtc.latest_checkpoint(directory)
        if epoch == 0:
            assert latest is None
        else:
            assert latest == str(directory / f"ckpt-{epoch}")
        ckpt.restore(latest)

        out = call(m, dtc.copy_to_mesh(np.float32(1.0), dtc.Layout.replicated(MESH, rank=0)))
        np.testing.assert_allclose(
            np.asarray(out),
            np.sum(1 + epoch + replicated_np) + np.sum(1 + epoch + sharded_np))

        _assert_dtensor_equal(epoch + replicated_np, replicated_layout, m.r)
        _assert_dtensor_equal(epoch + sharded_np, sharded_layout, m.s)

        m.s.assign_add(_pack(np.ones((2, 4)), sharded_layout))
        m.r.assign_add(dtc.copy_to_mesh(np.ones((8, 2), np.float32), replicated_layout))

        checkpoint_number = epoch + 1
        # the restored save_counter makes this save number `checkpoint_number`
        saved = ckpt.save(directory / "ckpt")
        assert saved == str(directory / f"ckpt-{checkpoint_number}")

        m.s.assign(sharded_zeros)
        m.r.assign(replicated_zeros)


LOOP_SPECS = pytest.mark.parametrize("shard_dims", [["x", U], [U, "x"]],
                                     ids=["x_unsharded", "unsharded_x"])


@LOOP_SPECS
def test_checkpoint_in_a_train_loop(tmp_path, shard_dims):
    # reference: save_restore_v2_test.py DTensorSaveRestoreV2Test.test_checkpoint_in_a_train_loop
    _train_loop(tmp_path, shard_dims, _Model, lambda m, x: m(x))


@LOOP_SPECS
def test_checkpoint_in_a_train_loop_model_without_call(tmp_path, shard_dims):
    # reference: save_restore_v2_test.py DTensorSaveRestoreV2Test.test_checkpoint_in_a_train_loop
    # (the same loop with a model that has no __call__, so the rest of the loop is checked
    # while the xfail above stands)
    _train_loop(tmp_path, shard_dims, _ModelWithoutCall, lambda m, x: m.apply(x))
