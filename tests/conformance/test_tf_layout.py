"""Mesh and Layout conformance, ported from the reference system's own tests.

Source: TensorFlow ``tensorflow/dtensor/python/tests/layout_test.py`` (classes ``MeshTest``,
``LayoutTest`` and ``RelayoutTest``). Every test names the reference case it comes from and
keeps its expected values; the TF-only cases (protobufs, graph mode, TPU/XLA, init scopes) are
not ported. Devices are simulated CPUs of this process unless a case is about device names.
"""

from __future__ import annotations

import copy
import itertools
import pickle

import numpy as np
import pytest

import dtensor_compiler as dtc

U = dtc.UNSHARDED

BATCH, X, Y = "batch", "x", "y"


def device_names(n: int, kind: str = "CPU") -> list[str]:
    """Fully qualified names of devices 0..n-1 of type `kind` on the local task."""
    return [f"/job:localhost/replica:0/task:0/device:{kind}:{i}" for i in range(n)]


def make_mesh(dims: list[str], shape: tuple[int, ...], kind: str = "CPU",
              **kwargs: object) -> dtc.Mesh:
    """A single-client mesh built with the constructor (ids 0..n-1, row-major, all local)."""
    n = int(np.prod(shape))
    ids = np.arange(n).reshape(shape)
    return dtc.Mesh(dims, ids, ids.ravel().tolist(), device_names(n, kind), **kwargs)


# The reference's 2x2 "batch, x" mesh and its text form (its devices are TPUs; here CPUs).
MESH_2D_STRING = "|batch=2,x=2|0,1,2,3|0,1,2,3|" + ",".join(device_names(4))
MESH_2D = make_mesh([BATCH, X], (2, 2))


def assert_dtensor_equal(expected: np.ndarray, layout: dtc.Layout, result: object) -> None:
    """Like the reference's assertDTensorEqual: `result` is a DTensor with exactly `layout`,
    its global value is `expected`, and every local component is that device's block."""
    assert dtc.is_dtensor(result)
    assert dtc.fetch_layout(result) == layout
    np.testing.assert_allclose(np.asarray(result), expected, rtol=1e-6)
    mesh = layout.mesh
    for device_id, component in zip(mesh.local_device_ids(), dtc.unpack(result)):
        where = dict(zip(mesh.dim_names, mesh.device_location(device_id)))
        index = []
        for extent, spec in zip(expected.shape, layout.sharding_specs):
            if spec == U:
                index.append(slice(None))
            else:
                block = extent // mesh.dim_size(spec)
                index.append(slice(where[spec] * block, (where[spec] + 1) * block))
        np.testing.assert_allclose(component, expected[tuple(index)], rtol=1e-6)


# == MeshTest ===================================================================================


def test_mesh_single_device():
    # reference: layout_test.py MeshTest.test_mesh_single_device
    mesh = dtc.Mesh.from_device("/job:localhost/replica:0/task:0/device:CPU:0")
    assert mesh.is_single_device()


def test_mesh_single_device_to_string():
    # reference: layout_test.py MeshTest.test_mesh_single_device_to_string
    mesh = dtc.Mesh.from_device("/job:localhost/replica:0/task:0/device:CPU:0")
    back = dtc.Mesh.from_string(mesh.to_string())
    assert back.is_single_device()
    assert back.single_device == mesh.single_device


def test_mesh_reciprocal_mock_string_and_object():
    # reference: layout_test.py MeshTest.test_mesh_reciprocal_mock_string_and_object
    # (the reference compares protos; here the mesh itself and its text form)
    parsed = dtc.Mesh.from_string(MESH_2D_STRING)
    assert parsed == MESH_2D
    assert parsed.to_string() == MESH_2D.to_string()
    assert hash(parsed) == hash(MESH_2D)


def test_mesh_reciprocal_string_rep():
    # reference: layout_test.py MeshTest.test_mesh_reciprocal_string_rep
    assert dtc.Mesh.from_string(MESH_2D_STRING).to_string() == MESH_2D_STRING


def test_mesh_reciprocal_string_rep_tpu_names():
    # reference: layout_test.py MeshTest.test_mesh_reciprocal_string_rep (its own TPU string)
    text = "|batch=2,x=2|0,1,2,3|0,1,2,3|" + ",".join(device_names(4, "TPU"))
    assert dtc.Mesh.from_string(text).to_string() == text


def test_mesh_repr():
    # reference: layout_test.py MeshTest.test_mesh_repr
    mesh = make_mesh([BATCH, X], (4, 2))
    text = repr(mesh)
    assert "batch=4,x=2" in text
    assert "CPU:0" in text
    assert "CPU:7" in text


def test_mesh_contains_dim():
    # reference: layout_test.py MeshTest.test_mesh_contains_dim
    assert MESH_2D.contains_dim("batch")
    assert MESH_2D.contains_dim("x")
    assert not MESH_2D.contains_dim("y")


def test_mesh_contains():
    # reference: layout_test.py MeshTest.test_mesh_contains
    assert "batch" in MESH_2D
    assert "x" in MESH_2D
    assert "y" not in MESH_2D


def test_mesh_dim_names_property():
    # reference: layout_test.py MeshTest.test_mesh_dim_names_property
    assert list(MESH_2D.dim_names) == ["batch", "x"]


def test_mesh_size_property():
    # reference: layout_test.py MeshTest.test_mesh_size_property
    assert MESH_2D.size == 4


def test_mesh_device_type():
    # reference: layout_test.py MeshTest.test_mesh_device_type
    assert make_mesh([BATCH, X], (2, 2), "TPU").device_type() == "TPU"
    assert make_mesh([X, Y], (2, 2), "CPU").device_type() == "CPU"


def test_mesh_num_local_devices():
    # reference: layout_test.py MeshTest.test_mesh_num_local_devices
    assert MESH_2D.num_local_devices() == 4


def test_mesh_min_global_device_id():
    # reference: layout_test.py MeshTest.test_mesh_min_global_device_id
    assert MESH_2D.min_global_device_id() == 0


def test_mesh_is_remote():
    # reference: layout_test.py MeshTest.test_mesh_is_remote
    assert not MESH_2D.is_remote()


def test_mesh_local_device_ids():
    # reference: layout_test.py MeshTest.test_mesh_local_device_ids
    assert list(MESH_2D.local_device_ids()) == [0, 1, 2, 3]


def test_mesh_local_devices():
    # reference: layout_test.py MeshTest.test_mesh_local_devices
    assert list(MESH_2D.local_devices()) == [
        "/job:localhost/replica:0/task:0/device:CPU:0",
        "/job:localhost/replica:0/task:0/device:CPU:1",
        "/job:localhost/replica:0/task:0/device:CPU:2",
        "/job:localhost/replica:0/task:0/device:CPU:3",
    ]


def test_mesh_shape():
    # reference: layout_test.py MeshTest.test_mesh_shape
    assert list(MESH_2D.shape()) == [2, 2]


def test_mesh_pickle():
    # reference: layout_test.py MeshTest.test_mesh_pickle
    restored = pickle.loads(pickle.dumps(MESH_2D))
    assert restored == MESH_2D


def test_mesh_pickle_w_modification_after_init():
    # reference: layout_test.py MeshTest.test_mesh_pickle_w_modification_after_init
    mesh = copy.copy(MESH_2D)
    mesh._name = "fake_name"  # an attribute set on the copy after construction, as there
    restored = pickle.loads(pickle.dumps(mesh))
    assert restored == mesh


def test_mesh_dims():
    # reference: layout_test.py MeshTest.test_mesh_dims
    mesh = make_mesh([BATCH, X], (4, 2))
    assert BATCH in mesh
    assert X in mesh
    assert Y not in mesh
    assert mesh[BATCH].name == BATCH
    assert mesh[BATCH].size == 4
    assert mesh[X].name == X
    assert mesh[X].size == 2


@pytest.mark.parametrize(("dims", "shape", "strides"), [
    (("a",), (8,), [1]),
    (("a", "b", "c"), (2, 4, 2), [8, 2, 1]),
    (("a", "b", "c", "d"), (8, 16, 2, 4), [128, 8, 4, 1]),
])
def test_mesh_strides(dims, shape, strides):
    # reference: layout_test.py MeshTest.test_mesh_strides (the 1024-device case is metadata
    # only: nothing runs on it)
    assert make_mesh(list(dims), shape).strides == strides


def test_mesh_coords():
    # reference: layout_test.py MeshTest.test_mesh_coords
    mesh = make_mesh(["a", "b", "c"], (2, 4, 2))
    one_pass = tuple(itertools.product(range(2), range(4), range(2)))
    # three passes over the 16 devices: indices past the end wrap around
    for idx, expected in enumerate(one_pass * 3):
        assert [int(c) for c in mesh.coords(idx)] == list(expected)


def test_mesh_use_xla_spmd_false():
    # reference: layout_test.py MeshTest.test_mesh_use_xla_spmd_tpu_mesh (the
    # do_not_use_xla_spmd case; the use_xla_spmd=True case needs a TPU mesh)
    mesh = make_mesh(["a", "b", "c"], (2, 4, 2), "TPU", use_xla_spmd=False)
    assert mesh.use_xla_spmd() is False


@pytest.mark.parametrize("kind", ["GPU", "CPU"])
def test_mesh_use_xla_spmd_for_non_tpu_mesh_raises_error(kind):
    # reference: layout_test.py MeshTest.test_mesh_use_xla_spmd_for_non_tpu_mesh_raises_error
    with pytest.raises(ValueError, match="XLA SPMD is not currently not supported for"):
        make_mesh(["a", "b", "c"], (2, 4, 2), kind, use_xla_spmd=True)


def test_non_unique_device_type():
    # reference: layout_test.py MeshTest.test_non_unique_device_type
    names = device_names(2, "CPU") + device_names(2, "TPU")
    ids = np.arange(4).reshape(2, 2)
    with pytest.raises(ValueError, match="Devices containing multiple device_types"):
        dtc.Mesh([BATCH, X], ids, ids.ravel().tolist(), names)


def test_duplicated_devices():
    # reference: layout_test.py MeshTest.test_duplicated_devices
    names = device_names(2) + device_names(2)
    ids = np.arange(4).reshape(2, 2)
    with pytest.raises(ValueError, match="Duplicate devices found in mesh specification"):
        dtc.Mesh([BATCH, X], ids, ids.ravel().tolist(), names)


def test_inconsecutive_device_ids():
    # reference: layout_test.py MeshTest.test_inconsecutive_device_ids
    ids = np.flip(np.arange(2))
    with pytest.raises(ValueError, match="global_device_ids must sequentially increase"):
        dtc.Mesh([BATCH], ids, ids.ravel().tolist(), device_names(2))


def test_host_mesh():
    # reference: layout_test.py MeshTest.test_host_mesh
    mesh = make_mesh([BATCH, X], (4, 2), "GPU", mesh_name="name_not_preserved")
    expected = make_mesh([BATCH, X], (4, 2), "CPU")
    assert mesh.host_mesh() == expected


# == LayoutTest =================================================================================


def test_empty_sharding_spec_different_from_single_unsharded():
    # reference: layout_test.py LayoutTest.test_empty_sharding_spec_different_from_single_unsharded
    one_unsharded = dtc.Layout.from_string("sharding_specs:unsharded, mesh:" + MESH_2D_STRING)
    scalar = dtc.Layout.from_string("sharding_specs: mesh:" + MESH_2D_STRING)
    assert one_unsharded.to_string() != scalar.to_string()
    assert one_unsharded.rank == 1
    assert scalar.rank == 0


@pytest.mark.parametrize("text", [
    "sharding_specs:batch,x, mesh:" + MESH_2D_STRING,
    "sharding_specs:" + U + "," + U + "," + " mesh:" + MESH_2D_STRING,
], ids=["sharded_batch_and_x", "unsharded_explicit"])
def test_layout_reciprocal_string_rep(text):
    # reference: layout_test.py LayoutTest.test_layout_reciprocal_string_rep
    assert dtc.Layout.from_string(text).to_string() == text


def test_layout_pickle():
    # reference: layout_test.py LayoutTest.test_layout_pickle
    replicated = dtc.Layout.replicated(MESH_2D, rank=3)
    assert pickle.loads(pickle.dumps(replicated)) == replicated


def test_layout_repr():
    # reference: layout_test.py LayoutTest.test_layout_repr
    layout = dtc.Layout.batch_sharded(MESH_2D, BATCH, rank=2)
    assert "batch,unsharded" in repr(layout)


def test_throws_for_non_mesh():
    # reference: layout_test.py LayoutTest.test_throws_for_non_mesh
    with pytest.raises(ValueError, match="mesh is not a valid Mesh object"):
        dtc.Layout([BATCH, X], "string_mesh")


def test_throws_for_repeated_dimension():
    # reference: layout_test.py LayoutTest.test_throws_for_repeated_dimension
    with pytest.raises(ValueError, match="Mesh dimensions must be unique."):
        dtc.Layout([BATCH, BATCH], MESH_2D)


def test_throws_for_invalid_sharding_spec():
    # reference: layout_test.py LayoutTest.test_throws_for_invalid_sharding_spec
    with pytest.raises(ValueError, match="A dimension sharding must either be a valid mesh "
                                         "dimension or UNSHARDED."):
        dtc.Layout(["WRONG_SHARDING_SPEC", "UNSHARDED"], MESH_2D)


def test_data_parallel_layout():
    # reference: layout_test.py LayoutTest.test_data_parallel_layout
    layout = dtc.Layout.batch_sharded(MESH_2D, BATCH, rank=2)
    assert layout.num_shards(0) == MESH_2D.dim_size(BATCH)
    assert layout.num_shards(1) == 1


def test_global_shape_from_local_shape():
    # reference: layout_test.py LayoutTest.test_global_shape_from_local_shape
    layout = dtc.Layout([BATCH, X, U], mesh=MESH_2D)
    assert tuple(layout.global_shape_from_local_shape((1, 3, 5))) == (2, 6, 5)


def test_local_shape_from_global_shape():
    # reference: layout_test.py LayoutTest.test_local_shape_from_global_shape
    layout = dtc.Layout([BATCH, X, U], mesh=MESH_2D)
    assert tuple(layout.local_shape_from_global_shape((2, 6, 5))) == (1, 3, 5)


def test_single_device_layout():
    # reference: layout_test.py LayoutTest.test_single_device_layout
    device = "/job:localhost/replica:0/task:0/device:CPU:0"
    mesh = dtc.Mesh.from_device(device)
    layout = dtc.Layout.from_single_device_mesh(mesh)
    assert layout.is_single_device()
    assert layout.mesh == mesh
    assert layout == dtc.Layout.from_device(mesh.single_device)


def test_single_device_layout_from_string():
    # reference: layout_test.py LayoutTest.test_single_device_layout_from_string
    mesh = dtc.Mesh.from_device("/job:localhost/replica:0/task:0/device:CPU:0")
    layout = dtc.Layout.from_single_device_mesh(mesh)
    assert dtc.Layout.from_string(layout.to_string()) == layout


def test_parted_layout():
    # reference: layout_test.py LayoutTest.test_parted_layout
    layout = dtc.Layout.batch_sharded(MESH_2D, BATCH, rank=2)
    parted = layout.to_parted()
    assert parted.type == dtc.LayoutType.PARTED


# == RelayoutTest ===============================================================================


@pytest.fixture
def xy_mesh() -> dtc.Mesh:
    """The reference RelayoutTest's 2x2 "x, y" mesh."""
    return make_mesh([X, Y], (2, 2))


@pytest.fixture
def layouts(xy_mesh):
    """The reference RelayoutTest's layouts, by its attribute names."""
    return {
        "x": dtc.Layout.batch_sharded(xy_mesh, X, rank=1),
        "y": dtc.Layout.batch_sharded(xy_mesh, Y, rank=1),
        "unsharded_unsharded": dtc.Layout.replicated(xy_mesh, rank=2),
        "x_unsharded": dtc.Layout.batch_sharded(xy_mesh, X, rank=2),
        "unsharded_x": dtc.Layout.inner_sharded(xy_mesh, X, rank=2),
    }


@pytest.mark.parametrize("is_replicated", [False, True])
def test_relayout(layouts, is_replicated):
    # reference: layout_test.py RelayoutTest.test_relayout (eager cases; the graph cases check
    # the error of a relayout op running off the DTensor device)
    inp = np.random.default_rng(1).uniform(size=(4, 4)).astype(np.float32)
    target = layouts["unsharded_unsharded" if is_replicated else "x_unsharded"]
    assert_dtensor_equal(inp, target, dtc.relayout(inp, target))


def test_relayout_to_parted(layouts, xy_mesh):
    # reference: layout_test.py RelayoutTest.test_relayout_to_parted (eager case)
    data = np.array([1, 2, 3, 4.0], dtype="f4")
    inp = dtc.relayout(data, layouts["y"])
    with dtc.default_mesh(xy_mesh):
        result = dtc.relayout(inp, layouts["y"].to_parted())
    assert_dtensor_equal(data, layouts["y"].to_parted(), result)


def test_relayout_like_simple(layouts, xy_mesh):
    # reference: layout_test.py RelayoutTest.test_relayout_like_simple (eager case)
    data = np.array([1, 2, 3, 4.0], dtype="f4")
    inp = dtc.relayout(data, layouts["y"])
    like = dtc.relayout(data, layouts["x"])
    with dtc.default_mesh(xy_mesh):
        result = dtc.relayout_like(inp, like)
    assert_dtensor_equal(data, layouts["x"], result)


def test_relayout_like_simple_compiled(layouts, xy_mesh):
    # reference: layout_test.py RelayoutTest.test_relayout_like_simple (is_graph case: the
    # relayout_like inside a compiled function, taking the layout of an outside DTensor)
    data = np.array([1, 2, 3, 4.0], dtype="f4")
    inp = dtc.relayout(data, layouts["y"])
    like = dtc.relayout(data, layouts["x"])

    @dtc.compile
    def do_relayout(t):
        return dtc.relayout_like(t, like)

    with dtc.default_mesh(xy_mesh):
        result = do_relayout(inp)
    assert_dtensor_equal(data, layouts["x"], result)


def _nested_gradients(layouts):
    """The reference's `inner` (the gradient of a cube taken through a relayout to
    [unsharded, x]) and `outer` (the gradient, through a relayout to [x, unsharded], of
    inner's result plus its argument)."""

    def inner(x):
        def cube_sum(v):
            t = dtc.relayout(v * 1.0, layouts["unsharded_x"])
            return np.sum(t * t * t)
        return dtc.grad(cube_sum)(x)

    def outer(x):
        def total(v):
            t = dtc.relayout(v, layouts["x_unsharded"])
            return np.sum(inner(t) + t)
        return dtc.grad(total)(x)

    return inner, outer


def test_nested_relayout_gradient_preserves_layout_inner(layouts):
    # reference: layout_test.py RelayoutTest.test_nested_relayout_gradient_preserves_layout
    # (its first assertion: the inner gradient has the layout of the original argument even
    # though the function relayouts to another one)
    inner, _ = _nested_gradients(layouts)
    replicated = layouts["unsharded_unsharded"]
    a = np.random.default_rng(2).uniform(size=(8, 8)).astype(np.float32)
    a_dt = dtc.relayout(a, replicated)
    assert_dtensor_equal(3 * a * a, replicated, dtc.compile(inner)(a_dt))


def test_nested_relayout_gradient_preserves_layout_outer(layouts):
    # reference: layout_test.py RelayoutTest.test_nested_relayout_gradient_preserves_layout
    # (its second assertion: the second-order gradient, 6a + 1, comes back replicated like
    # the argument)
    _, outer = _nested_gradients(layouts)
    replicated = layouts["unsharded_unsharded"]
    a = np.random.default_rng(2).uniform(size=(8, 8)).astype(np.float32)
    a_dt = dtc.relayout(a, replicated)
    assert_dtensor_equal(6 * a + 1, replicated, dtc.compile(outer)(a_dt))


def test_wus_using_relayout(xy_mesh):
    # reference: layout_test.py RelayoutTest.test_wus_using_relayout (the reference only runs
    # it; the value it computes, 2w - 1, is checked too)
    sharded = dtc.Layout.batch_sharded(xy_mesh, X, rank=2)
    replicated = dtc.Layout([U, U], mesh=xy_mesh)
    w = np.random.default_rng(3).uniform(size=(4, 4)).astype(np.float32)
    sharded_w = dtc.relayout(w, sharded)

    @dtc.compile
    def func_with_relayout(t):
        t = t + t

        def loss(u):
            return np.sum(dtc.relayout(u, replicated))

        return t - dtc.grad(loss)(t)

    result = func_with_relayout(sharded_w)
    np.testing.assert_allclose(np.asarray(result), 2 * w - 1, rtol=1e-6)


@pytest.mark.parametrize("size", [16, 4096])
def test_call_with_layout(xy_mesh, size):
    # reference: layout_test.py RelayoutTest.test_call_with_layout (eager cases)
    layout_x = dtc.Layout.batch_sharded(xy_mesh, batch_dim=X, rank=1)
    layout_y = dtc.Layout.batch_sharded(xy_mesh, batch_dim=Y, rank=1)
    expected = np.zeros(size, dtype=np.float32)
    with dtc.default_mesh(xy_mesh):
        tensor_x = dtc.call_with_layout(np.zeros, layout_x, shape=[size], dtype=np.float32)
        tensor_y = dtc.call_with_layout(np.zeros, layout_y, shape=[size], dtype=np.float32)
    assert_dtensor_equal(expected, layout_x, tensor_x)
    assert_dtensor_equal(expected, layout_y, tensor_y)
