"""Mesh and Layout semantics: device numbering, validation, text forms, shapes, shard maps."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

import dtensor_compiler as dtc
from dtensor_compiler.mesh import cpu_device_name

CPU0 = "/job:localhost/replica:0/task:0/device:CPU:0"


def devices(n: int) -> list[str]:
    return [cpu_device_name(i) for i in range(n)]


@pytest.fixture
def mesh32() -> dtc.Mesh:
    """The reference docs' 3x2 mesh."""
    return dtc.create_mesh([("x", 3), ("y", 2)])


# -- Mesh ---------------------------------------------------------------------------------------


def test_device_ids_are_row_major(mesh32):
    assert mesh32.global_device_ids().tolist() == [[0, 1], [2, 3], [4, 5]]
    assert mesh32.shape() == [3, 2]
    assert mesh32.strides == [2, 1]
    assert [mesh32.device_location(i) for i in range(6)] == [
        [0, 0], [0, 1], [1, 0], [1, 1], [2, 0], [2, 1]]
    assert mesh32.unravel_index()[3] == {"x": 1, "y": 1}
    assert mesh32.local_devices() == devices(6)
    assert mesh32.size == 6 and mesh32.dim_size("y") == 2 and mesh32["x"] == ("x", 3)
    assert "x" in mesh32 and "z" not in mesh32


def test_default_mesh_size_comes_from_the_environment(monkeypatch):
    assert dtc.create_mesh().shape() == [8]
    monkeypatch.setenv("DTC_NUM_DEVICES", "4")
    mesh = dtc.create_mesh()
    assert mesh.dim_names == ["x"] and mesh.shape() == [4]


@pytest.mark.parametrize("name", ["any", "match", "unsharded", "scalar"])
def test_reserved_dim_names_are_rejected(name):
    with pytest.raises(dtc.MeshError, match=f"'{name}' is reserved"):
        dtc.create_mesh([(name, 2)])


def test_duplicate_dim_names_are_rejected():
    with pytest.raises(dtc.MeshError, match=r"repeated: \['x'\]"):
        dtc.create_mesh([("x", 2), ("x", 2)])


def test_non_consecutive_ids_are_rejected_but_an_offset_start_is_fine():
    with pytest.raises(dtc.MeshError, match=r"sequentially increase.*\[0, 2, 4\]"):
        dtc.Mesh(["x"], np.array([0, 2, 4]), [0, 2, 4], devices(3))
    mesh = dtc.Mesh(["x"], np.arange(4, 8), [4, 5, 6, 7], devices(4))
    assert mesh.min_global_device_id() == 4
    assert mesh.device_location(6) == [2]


def test_dim_count_must_match_the_id_array():
    with pytest.raises(dtc.MeshError, match=r"2 dim names \['x', 'y'\].*1 dims"):
        dtc.Mesh(["x", "y"], np.arange(4), list(range(4)), devices(4))


def test_mesh_errors_are_value_errors():
    assert issubclass(dtc.MeshError, ValueError) and issubclass(dtc.LayoutError, ValueError)
    assert issubclass(dtc.MeshError, dtc.DTensorError)


def test_mesh_string_round_trip(mesh32):
    text = mesh32.to_string()
    assert text == "|x=3,y=2|0,1,2,3,4,5|0,1,2,3,4,5|" + ",".join(devices(6))
    again = dtc.Mesh.from_string(text)
    assert again == mesh32 and hash(again) == hash(mesh32)
    assert pickle.loads(pickle.dumps(mesh32)) == mesh32
    assert dtc.Mesh.from_string("|x=3,y=2|*CPU") == mesh32


# -- Layout -------------------------------------------------------------------------------------


def test_layout_names_unknown_and_reused_mesh_dims(mesh32):
    with pytest.raises(dtc.LayoutError, match="'z'"):
        dtc.Layout(["z", dtc.UNSHARDED], mesh32)
    with pytest.raises(dtc.LayoutError, match="'x' is used twice"):
        dtc.Layout(["x", "x"], mesh32)
    with pytest.raises(dtc.LayoutError, match="'x' is used twice"):
        dtc.Layout([("x", "y"), "x"], mesh32)


def test_layout_string_format_and_round_trip(mesh32):
    mesh_text = mesh32.to_string()
    cases = {
        dtc.Layout(["x", dtc.UNSHARDED], mesh32): "sharding_specs:x,unsharded, mesh:",
        dtc.Layout([], mesh32): "sharding_specs: mesh:",
        dtc.Layout([dtc.UNSHARDED], mesh32): "sharding_specs:unsharded, mesh:",
        dtc.Layout([("x", "y"), dtc.UNSHARDED], mesh32): "sharding_specs:x*y,unsharded, mesh:",
        dtc.Layout(["x", dtc.UNSHARDED], mesh32, partial={"y": "sum"}):
            "sharding_specs:x,unsharded, partial:y=sum, mesh:",
    }
    for layout, prefix in cases.items():
        text = layout.to_string()
        assert text == prefix + mesh_text
        again = dtc.Layout.from_string(text)
        assert again == layout and again.to_string() == text
        assert pickle.loads(pickle.dumps(layout)) == layout
    assert dtc.Layout([], mesh32) != dtc.Layout([dtc.UNSHARDED], mesh32)


def test_layout_factories(mesh32):
    u = dtc.UNSHARDED
    assert dtc.Layout.batch_sharded(mesh32, "x", 3).sharding_specs == ["x", u, u]
    assert dtc.Layout.batch_sharded(mesh32, "y", 3, axis=1).sharding_specs == [u, "y", u]
    assert dtc.Layout.inner_sharded(mesh32, "y", 3).sharding_specs == [u, u, "y"]
    replicated = dtc.Layout.replicated(mesh32, 2)
    assert replicated.sharding_specs == [u, u] and replicated.is_fully_replicated()
    assert dtc.Layout.batch_sharded(mesh32, "x", 2).is_batch_parallel()
    assert not dtc.Layout.inner_sharded(mesh32, "x", 2).is_batch_parallel()


def test_local_and_global_shapes(mesh32):
    layout = dtc.Layout(["x", "y"], mesh32)
    assert layout.local_shape_from_global_shape([6, 4]) == (2, 2)
    assert layout.global_shape_from_local_shape([2, 2]) == (6, 4)
    both = dtc.Layout([("x", "y"), dtc.UNSHARDED], mesh32)
    assert [both.num_shards(0), both.num_shards(1)] == [6, 1]
    assert both.local_shape_from_global_shape([12, 5]) == (2, 5)
    # uneven: 4 over 6 shards gives blocks of room 1, the last two empty
    assert both.local_shape_from_global_shape([4, 5]) == (1, 5)
    assert both.block_shapes([4, 5]) == [(1, 5)] * 4 + [(0, 5)] * 2
    assert layout.block_shapes([5, 3]) == [(2, 2), (2, 1)] * 2 + [(1, 2), (1, 1)]
    with pytest.raises(dtc.LayoutError, match=r"shape \[-1, 3\] has a negative dim"):
        layout.block_shapes([-1, 3])
    with pytest.raises(dtc.LayoutError, match="rank 2 but the shape"):
        layout.local_shape_from_global_shape([6, 4, 2])


def test_offset_to_shard_on_the_docs_example(mesh32):
    layout = dtc.Layout(["x", dtc.UNSHARDED], mesh32)
    assert layout.offset_to_shard() == [(0, 0), (0, 0), (1, 0), (1, 0), (2, 0), (2, 0)]
    # the shard grid (3 x 1 here) linearized, as the reference does: shard (2, 0) is 2
    assert layout.offset_tuple_to_global_index((2, 0)) == 2
    square = dtc.Layout(["x", dtc.UNSHARDED], dtc.create_mesh([("x", 2), ("y", 2)]))
    assert square.offset_tuple_to_global_index((1, 0)) == 1
    with pytest.raises(dtc.LayoutError, match="dim 0 has 2 shards"):
        square.offset_tuple_to_global_index((2, 0))
    swapped = dtc.Layout([dtc.UNSHARDED, ("y", "x")], mesh32)
    assert swapped.offset_to_shard() == [(0, 0), (0, 3), (0, 1), (0, 4), (0, 2), (0, 5)]


def test_match_is_only_a_relayout_target(mesh32):
    layout = dtc.Layout([dtc.MATCH, "y"], mesh32)
    assert layout.num_shards(0) == -1
    with pytest.raises(dtc.LayoutError, match="MATCH"):
        _ = layout.sharding


def test_mesh_of_a_layout_must_be_a_mesh():
    with pytest.raises(dtc.LayoutError, match="not a valid Mesh"):
        dtc.Layout(["x"], "x=2")  # type: ignore[arg-type]


# -- clearer errors (issue #7 point 15) ---------------------------------------------------------


def test_meshes_that_differ_only_by_name_read_differently():
    a = dtc.create_mesh([("dp", 2), ("tp", 4)], mesh_name="a")
    b = dtc.create_mesh([("dp", 2), ("tp", 4)], mesh_name="b")
    assert a.short_text() == "mesh<dp=2, tp=4> named 'a'"
    assert dtc.create_mesh([("dp", 2), ("tp", 4)]).short_text() == "mesh<dp=2, tp=4>"
    assert repr(a) != repr(b) and repr(a).startswith("Mesh.from_string('a|dp=2,tp=4|")
    t = dtc.copy_to_mesh(np.ones((2, 4), np.float32), dtc.Layout(["dp", dtc.UNSHARDED], a))
    with pytest.raises(dtc.LayoutError) as e:
        dtc.relayout(t, dtc.Layout(["dp", dtc.UNSHARDED], b))
    assert str(e.value) == ("relayout cannot move a tensor between meshes (from "
                            "mesh<dp=2, tp=4> named 'a' to mesh<dp=2, tp=4> named 'b'); use "
                            "copy_to_mesh")


def test_none_spec_is_unsharded(mesh32):
    layout = dtc.Layout(["x", None], mesh32)
    assert layout == dtc.Layout(["x", dtc.UNSHARDED], mesh32)
    assert layout.sharding_specs == ["x", dtc.UNSHARDED]


@pytest.mark.parametrize(("specs", "message"), [
    ([0, "y"], "sharding spec 0 is 0;"),
    (["x", 1.5], "sharding spec 1 is 1.5;"),
])
def test_non_string_spec_names_spec_and_position(mesh32, specs, message):
    with pytest.raises(dtc.LayoutError) as e:
        dtc.Layout(specs, mesh32)
    assert str(e.value) == (f"{message} a spec is a mesh dim name, UNSHARDED (or None), MATCH "
                            "or a tuple of mesh dim names")
