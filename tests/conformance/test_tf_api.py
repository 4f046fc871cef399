"""Conformance port of the reference system's `tensorflow/dtensor/python/tests/api_test.py`
(class ``APITest``) to the numpy API of dtensor_compiler.

Translation of concepts:

* TF tensors are numpy arrays and `dtc.DTensor`s; ``tf.function`` is `dtc.compile`. Eager
  arithmetic on DTensors is refused by this library on purpose, so every op the reference runs
  eagerly on a DTensor runs here inside a compiled function.
* ``array_ops.zeros(..., layout=L)`` (an op run with a default output layout) is
  `dtc.call_with_layout(np.zeros, L, ...)`.
* ``numpy_util.pack_numpy(t, L)`` is `dtc.copy_to_mesh(t, L)`.
* The reference's ``assertDTensorEqual`` is `assert_dtensor_equal` below: layout, dtype and
  global shape equal, every per-device component equal to its block of the expected value
  (which also checks that replicated copies agree).

Each test names the reference test it comes from.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import dtensor_compiler as dtc

U = dtc.UNSHARDED
X = "x"
Y = "y"
TOL = 1e-5  # the reference's DEFAULT_TOL


def _cpu_devices(n: int) -> list[str]:
    return [f"/job:localhost/replica:0/task:0/device:CPU:{i}" for i in range(n)]


@pytest.fixture
def mesh() -> dtc.Mesh:
    """The reference fixture: a 2x2 CPU mesh with dims x and y, every device local."""
    ids = np.arange(4).reshape(2, 2)
    return dtc.Mesh([X, Y], ids, ids.ravel().tolist(), _cpu_devices(4))


def layouts_1d(mesh: dtc.Mesh) -> list[dtc.Layout]:
    return [dtc.Layout.replicated(mesh, rank=1),
            dtc.Layout.batch_sharded(mesh, X, rank=1),
            dtc.Layout.batch_sharded(mesh, Y, rank=1)]


def layouts_2d(mesh: dtc.Mesh) -> list[dtc.Layout]:
    return [dtc.Layout.replicated(mesh, rank=2),
            dtc.Layout.batch_sharded(mesh, X, rank=2),
            dtc.Layout.inner_sharded(mesh, X, rank=2),
            dtc.Layout([X, Y], mesh)]


def _block(value: np.ndarray, layout: dtc.Layout, device: int) -> np.ndarray:
    """The part of `value` that `device` holds under `layout` (even shapes only)."""
    index = []
    for axis, number in enumerate(layout.offset_to_shard()[device]):
        size = value.shape[axis] // layout.num_shards(axis)
        index.append(slice(number * size, (number + 1) * size))
    return value[tuple(index)]


def assert_dtensor_equal(expected: np.ndarray, expected_layout: dtc.Layout | None,
                         result: object, tol: float = TOL) -> None:
    if isinstance(result, dtc.DVariable):
        result = result.read_value()
    layout = dtc.fetch_layout(result)
    if expected_layout is not None:
        assert layout == expected_layout, (
            f"expected layout {expected_layout.short_text()}, got {layout.short_text()}")
    assert result.dtype == expected.dtype
    assert tuple(result.shape) == tuple(expected.shape)
    np.testing.assert_allclose(np.asarray(result), expected, atol=tol, rtol=tol)
    for device, part in enumerate(dtc.unpack(result)):
        np.testing.assert_allclose(part, _block(expected, layout, device), atol=tol, rtol=tol)


# -- ops run with a layout ---------------------------------------------------------------------


# reference: api_test.py APITest.testV2API
def test_v2_api_zeros_and_ones_with_layout(mesh):
    layout = dtc.Layout.replicated(mesh, rank=1)
    zeros = dtc.call_with_layout(np.zeros, layout, [10], dtype=np.float32)
    zeros_like = dtc.compile(np.zeros_like, out_layouts=layout)(zeros)
    np.testing.assert_array_equal(zeros_like.numpy(), zeros.numpy())

    ones = dtc.call_with_layout(np.ones, layout, [10], dtype=np.float32)
    ones_like = dtc.compile(np.ones_like, out_layouts=layout)(zeros)
    np.testing.assert_array_equal(ones_like.numpy(), ones.numpy())
    for t in (zeros, zeros_like, ones, ones_like):
        assert dtc.fetch_layout(t) == layout


# reference: api_test.py APITest.testStatelessRandomNormal (the d_random part: a random op
# run with a layout; numpy's seeded generator stands for the stateless op)
@pytest.mark.parametrize("dtype, mean, stddev, seed", [
    (np.float32, 0.0, 1.0, 0), (np.float64, 0.0, 1.0, 1), (np.float32, 0.0, 0.0, 1)])
def test_random_normal_with_layout(mesh, dtype, mean, stddev, seed):
    layout = dtc.Layout.replicated(mesh, rank=1)

    def normal(shape):
        rng = np.random.default_rng([seed, 2])
        return rng.normal(mean, stddev, size=shape).astype(dtype)

    result = dtc.call_with_layout(normal, layout, [10])
    assert list(result.shape) == [10]
    assert dtc.fetch_layout(result) == layout
    if stddev == 0.0:
        values = result.numpy()
        assert np.all((values >= 0) & (values <= 0))


# -- softmax cross entropy ---------------------------------------------------------------------


def _softmax_xent(labels, logits):
    shifted = logits - np.max(logits, axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))
    return -np.sum(labels * log_probs, axis=-1)


def _sparse_softmax_xent(labels, logits):
    shifted = logits - np.max(logits, axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))
    one_hot = np.expand_dims(labels, -1) == np.arange(logits.shape[-1])
    return -np.sum(np.where(one_hot, log_probs, 0.0), axis=-1)


_LABELS_2D = [("labels_unsharded", 0), ("labels_batch", 1), ("labels_inner", 2),
              ("labels_both", 3)]
_LOGITS_2D = [("logits_unsharded", 0), ("logits_batch", 1), ("logits_inner", 2),
              ("logits_both", 3)]
_LABELS_1D = [("labels_unsharded", 0), ("labels_batch_x", 1), ("labels_batch_y", 2)]


def _pairs(first, second):
    """Every (labels, logits) layout pair."""
    cases = [pytest.param(a[1], b[1], id=f"{a[0]}-{b[0]}")
             for a, b in itertools.product(first, second)]
    return pytest.mark.parametrize("labels_index, logits_index", cases)




# reference: api_test.py APITest.testSoftmaxCrossentropyWithLogits
@_pairs(_LABELS_2D, _LOGITS_2D)
def test_softmax_cross_entropy_with_logits(mesh, labels_index, logits_index):
    expected_layout = dtc.Layout.replicated(mesh, rank=1)
    if labels_index in (1, 3) or logits_index in (1, 3):
        expected_layout = dtc.Layout.inner_sharded(mesh, X, rank=1)

    rng = np.random.default_rng(10 * labels_index + logits_index)
    labels_np = rng.uniform(size=[6, 4]).astype(np.float32)
    logits_np = rng.uniform(size=[6, 4]).astype(np.float32)
    expected = _softmax_xent(labels_np.astype(np.float64),
                             logits_np.astype(np.float64)).astype(np.float32)

    labels = dtc.copy_to_mesh(labels_np, layouts_2d(mesh)[labels_index])
    logits = dtc.copy_to_mesh(logits_np, layouts_2d(mesh)[logits_index])
    result = dtc.compile(_softmax_xent)(labels, logits)
    assert_dtensor_equal(expected, expected_layout, result)


# reference: api_test.py APITest.testSparseSoftmaxCrossentropyWithLogits
@_pairs(_LABELS_1D, _LOGITS_2D)
def test_sparse_softmax_cross_entropy_with_logits(mesh, labels_index, logits_index):
    expected_layout = dtc.Layout.replicated(mesh, rank=1)
    if labels_index == 1 or logits_index in (1, 3):
        expected_layout = dtc.Layout.inner_sharded(mesh, X, rank=1)
    elif labels_index == 2:
        expected_layout = dtc.Layout.inner_sharded(mesh, Y, rank=1)

    rng = np.random.default_rng(10 * labels_index + logits_index)
    labels_np = rng.integers(0, 4, size=[6]).astype(np.int64)
    logits_np = rng.uniform(size=[6, 4]).astype(np.float32)
    expected = _sparse_softmax_xent(labels_np, logits_np.astype(np.float64)).astype(np.float32)

    labels = dtc.copy_to_mesh(labels_np, layouts_1d(mesh)[labels_index])
    logits = dtc.copy_to_mesh(logits_np, layouts_2d(mesh)[logits_index])
    result = dtc.compile(_sparse_softmax_xent)(labels, logits)
    assert_dtensor_equal(expected, expected_layout, result)


# -- default meshes ----------------------------------------------------------------------------


def _add_three(a):
    return a + 3.0


# reference: api_test.py APITest.test_default_mesh
def test_default_mesh(mesh):
    func = dtc.compile(_add_three)
    with dtc.default_mesh(mesh):
        a = np.zeros((), dtype=np.float32)
        result = func(a)
    assert result.numpy() == 3.0
    assert dtc.fetch_layout(result).mesh == mesh
    assert dtc.fetch_layout(result).is_fully_replicated()

    @dtc.default_mesh(mesh)  # the context manager also decorates a function
    def func2():
        b = np.ones((), dtype=np.float32)
        return func(b)

    result = func2()
    assert result.numpy() == 4.0
    assert dtc.fetch_layout(result).mesh == mesh
    assert dtc.fetch_layout(result).is_fully_replicated()


# reference: api_test.py APITest.test_default_mesh (the `result.device == device_name()` checks)
def test_default_mesh_result_is_on_the_dtensor_device(mesh):
    func = dtc.compile(_add_three)
    with dtc.default_mesh(mesh):
        result = func(np.zeros((), dtype=np.float32))
    assert result.device == dtc.device_name()

    @dtc.default_mesh(mesh)
    def func2():
        return func(np.ones((), dtype=np.float32))

    assert func2().device == dtc.device_name()


# reference: api_test.py APITest.test_default_mesh (default_mesh(None) raises)
def test_default_mesh_rejects_none():
    with pytest.raises(ValueError, match="Expect `mesh` to be `Mesh`"), dtc.default_mesh(None):
        pass


# reference: api_test.py APITest.test_default_mesh (the error class alone, no message check)
def test_default_mesh_rejects_none_with_value_error():
    with pytest.raises(ValueError), dtc.default_mesh(None):
        pass


# reference: api_test.py APITest.test_default_mesh_with_constant
def test_default_mesh_with_constant(mesh):
    @dtc.compile
    def func():
        return np.array([3, 4])

    with dtc.default_mesh(mesh):
        result = func()
    np.testing.assert_array_equal(result.numpy(), [3, 4])
    assert dtc.fetch_layout(result).mesh == mesh
    assert dtc.fetch_layout(result).is_fully_replicated()


# reference: api_test.py APITest.test_default_mesh_with_constant (`result.device` check)
def test_default_mesh_with_constant_is_on_the_dtensor_device(mesh):
    with dtc.default_mesh(mesh):
        result = dtc.compile(lambda: np.array([3, 4]))()
    assert result.device == dtc.device_name()


# reference: api_test.py APITest.test_get_default_mesh
def test_get_default_mesh(mesh):
    assert dtc.get_default_mesh() is None
    with dtc.default_mesh(mesh):
        assert dtc.get_default_mesh() == mesh
        with dtc.default_mesh(mesh.host_mesh()):
            assert dtc.get_default_mesh() == mesh.host_mesh()
        assert dtc.get_default_mesh() == mesh
    assert dtc.get_default_mesh() is None
