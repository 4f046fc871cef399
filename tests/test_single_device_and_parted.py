"""Single-device meshes and layouts (an ordinary array on one device) and parted layouts (the
blocks of a static layout as independent parts): their text forms, equality, and what the
API does with them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import dtensor_compiler as dtc

U = dtc.UNSHARDED
CPU0 = "/job:localhost/replica:0/task:0/device:CPU:0"


@pytest.fixture
def one() -> dtc.Mesh:
    return dtc.Mesh.from_device(CPU0)


@pytest.fixture
def mesh() -> dtc.Mesh:
    return dtc.create_mesh([("x", 2), ("y", 4)])


# -- single-device meshes and layouts -------------------------------------------------------------


def test_a_single_device_mesh_has_no_dims_and_its_device_as_text(one):
    assert one.is_single_device() and one.single_device == CPU0
    assert (one.dim_names, one.size, one.shape(), one.local_devices()) == ([], 1, [], [CPU0])
    assert one.to_string() == CPU0 and dtc.Mesh.from_string(CPU0) == one
    assert dtc.Mesh.from_device("CPU:0") == one  # a short name is made full
    assert not dtc.create_mesh([("x", 2)]).is_single_device()
    assert dtc.create_mesh([("x", 2)]).single_device == ""


@pytest.mark.parametrize("device", ["", "GPU", "/job:a/task:x/device:CPU:0"])
def test_a_single_device_mesh_needs_a_device_name(device):
    with pytest.raises(dtc.MeshError, match="device name"):
        dtc.Mesh.from_device(device)


def test_single_device_layouts_take_any_rank_and_are_all_equal(one):
    layout = dtc.Layout.from_single_device_mesh(one)
    assert layout.type == dtc.LayoutType.SINGLE_DEVICE and layout.is_single_device()
    assert layout.rank == 0 and layout.for_rank(3).sharding_specs == [U, U, U]
    assert layout.to_string() == f"maximal:true, mesh:{CPU0}"
    assert layout == dtc.Layout.from_device(CPU0) == dtc.Layout([U, U], one)
    assert hash(layout) == hash(dtc.Layout([U, U], one))
    assert dtc.Layout.from_string(dtc.Layout([U, U], one).to_string()) == layout


def test_a_rank_less_single_device_layout_answers_for_any_shape(one):
    """Shape questions of a single-device layout of no rank are about the whole tensor on
    its device, whatever its rank; a 0-d component packs onto it."""
    layout = dtc.Layout.from_single_device_mesh(one)
    assert layout.num_shards(0) == layout.num_shards(2) == 1
    assert layout.local_shape_from_global_shape([3, 4]) == (3, 4)
    assert layout.global_shape_from_local_shape([3, 4]) == (3, 4)
    assert layout.block_shapes((5,)) == [(5,)]
    assert layout.delete([0]) == layout
    scalar = dtc.pack([np.float32(2.5)], layout)
    assert scalar.shape == () and dtc.unpack(scalar)[0].shape == ()
    assert dtc.unpack(scalar)[0] == np.float32(2.5)


def test_single_device_layout_errors(one, mesh):
    with pytest.raises(dtc.LayoutError, match="needs a single-device mesh"):
        dtc.Layout.from_single_device_mesh(mesh)
    with pytest.raises(dtc.LayoutError, match="maximal:true, mesh:<device>"):
        dtc.Layout.from_string(f"maximal:true,x, mesh:{CPU0}")
    with pytest.raises(dtc.LayoutError, match="valid mesh dimension"):
        dtc.Layout(["x"], one)
    with pytest.raises(dtc.LayoutError, match="needs a single-device mesh"):
        dtc.Layout.from_string(f"maximal:true, mesh:{mesh.to_string()}")


def test_values_on_one_device(one):
    """pack, copy_to_mesh and DVariable give a rank-less single-device layout the tensor's
    rank; a compiled function runs on the one device with no collectives."""
    layout = dtc.Layout.from_device(CPU0)
    data = np.arange(12.0, dtype=np.float32).reshape(3, 4)
    packed = dtc.pack([data], layout)
    assert packed.layout.rank == 2 and dtc.fetch_layout(packed) == layout
    np.testing.assert_array_equal(dtc.unpack(packed)[0], data)
    placed = dtc.copy_to_mesh(data, layout)
    variable = dtc.DVariable(data, layout=layout)

    @dtc.compile
    def f(a, b):
        return (a * b).sum(axis=0)

    out = f(placed, variable)
    np.testing.assert_array_equal(np.asarray(out), (data * data).sum(axis=0))
    assert out.layout == layout and f.lower(placed, variable).collectives() == []
    g = dtc.compile(lambda a: a + 1, in_layouts=layout, out_layouts=layout)
    np.testing.assert_array_equal(np.asarray(g(data)), data + 1)


def test_a_checkpoint_saved_on_one_device_restores_onto_a_mesh(one, mesh, tmp_path: Path):
    data = np.arange(64.0, dtype=np.float32).reshape(8, 8)
    dtc.name_based_save(one, tmp_path / "ck", {"w": dtc.copy_to_mesh(
        data, dtc.Layout.from_device(CPU0))})
    target = dtc.copy_to_mesh(np.zeros_like(data), dtc.Layout(["y", "x"], mesh))
    back = dtc.name_based_restore(mesh, tmp_path / "ck", {"w": target})["w"]
    assert back.layout == target.layout
    np.testing.assert_array_equal(np.asarray(back), data)
    again = dtc.name_based_restore(one, tmp_path / "ck", {"w": dtc.copy_to_mesh(
        np.zeros_like(data), dtc.Layout.from_device(CPU0))})["w"]
    np.testing.assert_array_equal(np.asarray(again), data)


# -- parted layouts -------------------------------------------------------------------------------


def test_parted_layouts_text_and_equality(mesh):
    static = dtc.Layout(["x", U], mesh)
    parted = static.to_parted()
    assert parted.type == dtc.LayoutType.PARTED and parted.is_parted()
    assert static.type == dtc.LayoutType.STATIC and not static.is_parted()
    assert parted.to_string().startswith("parted:x,unsharded, mesh:|x=2,y=4|")
    assert dtc.Layout.from_string(parted.to_string()) == parted != static
    assert parted.sharding == static.sharding and parted.short_text() == "{x, -} parted"
    assert parted.delete([1]).is_parted()


def test_parted_layouts_cannot_pend_reductions(mesh, one):
    with pytest.raises(dtc.LayoutError, match="pending reductions"):
        dtc.Layout(["x", U], mesh, partial={"y": "sum"}).to_parted()
    with pytest.raises(dtc.LayoutError, match="single-device mesh"):
        dtc.Layout.from_device(CPU0).to_parted()


def test_relayout_to_and_from_parted_keeps_the_blocks(mesh):
    data = np.arange(32.0, dtype=np.float32).reshape(8, 4)
    static = dtc.copy_to_mesh(data, dtc.Layout(["x", U], mesh))
    parted = dtc.relayout(static, static.layout.to_parted())
    assert parted.layout.is_parted()
    assert [b.tolist() for b in dtc.unpack(parted)] == [b.tolist() for b in dtc.unpack(static)]
    other = dtc.relayout(static, dtc.Layout([U, "y"], mesh).to_parted())  # moves, then parts
    assert other.layout == dtc.Layout([U, "y"], mesh).to_parted()
    np.testing.assert_array_equal(np.asarray(other), data)
    back = dtc.relayout(parted, dtc.Layout(["x", U], mesh))
    assert back.layout.type == dtc.LayoutType.STATIC
    np.testing.assert_array_equal(np.asarray(back), data)
    packed = dtc.pack(dtc.unpack(static), static.layout.to_parted())
    assert packed.layout.is_parted() and packed.shape == (8, 4)


def test_compiled_functions_refuse_parted_layouts(mesh):
    parted = dtc.copy_to_mesh(np.ones((8, 4), np.float32),
                              dtc.Layout(["x", U], mesh).to_parted())
    with pytest.raises(dtc.LayoutError, match="argument 'a' is parted .*static layouts"):
        dtc.compile(lambda a: a + 1)(parted)
    with pytest.raises(dtc.LayoutError, match=r"in_layouts\[0\] is parted"):
        dtc.compile(lambda a: a, in_layouts=parted.layout)

    @dtc.compile
    def inside(a):
        return dtc.relayout(a, dtc.Layout(["x", U], mesh).to_parted())

    with pytest.raises(dtc.LayoutError, match="parted layout .* inside a compiled function"):
        inside(np.ones((8, 4), np.float32))
