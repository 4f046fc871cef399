"""The stacked representation: layout convention, round trips, partial values, device shards."""

from __future__ import annotations

import numpy as np
import pytest
from stacked_cases import MESHES, all_shardings, reference_block

from dtensor_compiler.ir.sharding import MeshShape, Sharding
from dtensor_compiler.runtime.stacked import (
    block_index,
    device_shard,
    expected_stacked_shape,
    from_device_shards,
    from_stacked,
    reduction_identity,
    to_stacked,
)

MESH_2x4 = MESHES["2x4"]


@pytest.mark.parametrize("mesh_name", sorted(MESHES))
def test_every_layout_round_trips_and_follows_the_block_convention(mesh_name: str) -> None:
    mesh = MESHES[mesh_name]
    g = np.arange(8 * 16 * 24, dtype=np.int32).reshape(8, 16, 24)
    for s in all_shardings(3, mesh, partial_ops=()):
        stacked = to_stacked(g, s, mesh)
        assert stacked.shape == expected_stacked_shape(s.local_shape(g.shape, mesh), s, mesh)
        np.testing.assert_array_equal(from_stacked(stacked, s, mesh), g)
        shards = [device_shard(stacked, s, mesh, d) for d in range(mesh.num_devices)]
        for d, shard in enumerate(shards):
            np.testing.assert_array_equal(shard, reference_block(g, s, mesh, d), err_msg=f"{s} {d}")
        np.testing.assert_array_equal(from_device_shards(shards, s, mesh), stacked)


def test_replicated_mesh_dims_have_extent_one_and_sharded_ones_the_mesh_size() -> None:
    s = Sharding.of(None, "y", partial={"x": "sum"})
    assert expected_stacked_shape((4, 3), s, MESH_2x4) == (2, 4, 4, 3)
    assert expected_stacked_shape((4, 3), Sharding.of("y", None), MESH_2x4) == (1, 4, 4, 3)
    assert expected_stacked_shape((), Sharding.of(), MESH_2x4) == (1, 1)


def test_multi_mesh_dim_block_order_is_major_to_minor() -> None:
    g = np.arange(8)
    yx = to_stacked(g, Sharding.of(("y", "x")), MESH_2x4)
    # device (x=1, y=2) holds block 2 * 2 + 1 = 5 under (y, x), block 1 * 4 + 2 = 6 under (x, y)
    assert yx[1, 2].tolist() == [5]
    assert to_stacked(g, Sharding.of(("x", "y")), MESH_2x4)[1, 2].tolist() == [6]
    assert block_index(("y", "x"), MESH_2x4).tolist() == [[0, 2, 4, 6], [1, 3, 5, 7]]


@pytest.mark.parametrize("op,dtype", [
    ("sum", np.float32), ("max", np.float64), ("min", np.float32), ("prod", np.float64),
    ("sum", np.int32), ("max", np.int64), ("min", np.int16), ("prod", np.int32),
    ("max", np.bool_), ("min", np.bool_), ("max", np.uint8),
])
def test_partial_layouts_hold_the_value_on_coordinate_zero(op: str, dtype: type) -> None:
    g = (np.arange(12).reshape(3, 4) % 5 - 2).astype(dtype)
    s = Sharding.of(None, "x", partial={"y": op})
    stacked = to_stacked(g, s, MESH_2x4)
    assert stacked.dtype == dtype and stacked.shape == (2, 4, 3, 2)
    identity = reduction_identity(op, np.dtype(dtype))
    assert identity.dtype == dtype
    assert (stacked[:, 1:] == identity).all()
    np.testing.assert_array_equal(stacked[:, 0], to_stacked(g, s.without_partial(), MESH_2x4)[:, 0])
    out = from_stacked(stacked, s, MESH_2x4)
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, g)


def test_reduction_identities() -> None:
    assert reduction_identity("max", np.dtype(np.float32)) == -np.inf
    assert reduction_identity("min", np.dtype(np.int8)) == 127
    assert reduction_identity("max", np.dtype(np.int8)) == -128
    assert reduction_identity("prod", np.dtype(np.int64)) == 1
    lowest = reduction_identity("max", np.dtype(np.complex64))  # numpy's order: real, then imag
    assert lowest == complex(-np.inf, -np.inf) and lowest.dtype == np.complex64
    with pytest.raises(ValueError, match="no identity"):
        reduction_identity("max", np.dtype("datetime64[s]"))


def test_mixed_partials_give_the_value_back_in_either_reduction_order() -> None:
    mesh = MESHES["2x2x2"]
    g = np.arange(-4.0, 4.0).reshape(2, 4)
    s = Sharding.of("z", None, partial={"x": "sum", "y": "max"})
    stacked = to_stacked(g, s, mesh)
    x_first = np.max(np.sum(stacked, axis=0, keepdims=True), axis=1, keepdims=True)
    y_first = np.sum(np.max(stacked, axis=1, keepdims=True), axis=0, keepdims=True)
    plain = to_stacked(g, Sharding.of("z", None), mesh)
    np.testing.assert_array_equal(x_first, plain)
    np.testing.assert_array_equal(y_first, plain)
    np.testing.assert_array_equal(from_stacked(stacked, s, mesh), g)


def test_from_stacked_applies_pending_sums_over_all_terms() -> None:
    mesh = MESHES["2x2"]
    terms = np.arange(2 * 2 * 3, dtype=np.float64).reshape(2, 2, 3)
    s = Sharding.of("y", partial={"x": "sum"})
    np.testing.assert_array_equal(from_stacked(terms, s, mesh),
                                  np.concatenate([terms[0, 0] + terms[1, 0],
                                                  terms[0, 1] + terms[1, 1]]))


def test_from_device_shards_keeps_one_replicated_copy_and_names_a_differing_device() -> None:
    s = Sharding.of("y", None)
    g = np.arange(8.0).reshape(4, 2)
    shards = [device_shard(to_stacked(g, s, MESH_2x4), s, MESH_2x4, d) for d in range(8)]
    stacked = from_device_shards(shards, s, MESH_2x4)
    assert stacked.shape == (1, 4, 1, 2)
    shards[6] = shards[6] + 1  # device 6 is (x=1, y=2): a copy of device 2's block
    with pytest.raises(ValueError, match="device 6 .* device 2"):
        from_device_shards(shards, s, MESH_2x4)


def test_from_device_shards_treats_nan_copies_as_equal() -> None:
    shards = [np.array([np.nan, 1.0])] * 4
    stacked = from_device_shards(shards, Sharding.of(None), MESHES["1d"])
    assert stacked.shape == (1, 2)


def test_bad_inputs_are_rejected_with_the_reason() -> None:
    s = Sharding.of("y")
    with pytest.raises(ValueError, match="rank 1 but the tensor has rank 2"):
        to_stacked(np.zeros((6, 2)), s, MESH_2x4)
    with pytest.raises(ValueError, match="mesh extents"):
        from_stacked(np.zeros((2, 4, 2)), s, MESH_2x4)
    with pytest.raises(ValueError, match="device 8 is not in"):
        device_shard(np.zeros((1, 4, 2)), s, MESH_2x4, 8)
    with pytest.raises(ValueError, match="8 devices, got 3"):
        from_device_shards([np.zeros(2)] * 3, s, MESH_2x4)
    with pytest.raises(ValueError, match="device 1 holds shape"):
        from_device_shards([np.zeros(2), np.zeros(3)] + [np.zeros(2)] * 6, s, MESH_2x4)
    with pytest.raises(ValueError, match=r"device 3 holds shape \[2\], its block of a \[6\] "
                                         r"tensor laid out as \{y\} has shape \[0\]"):
        from_device_shards([np.zeros(2)] * 8, s, MESH_2x4, (6,))


def test_uneven_blocks_are_padded_in_the_stacked_array_and_trimmed_out_of_it() -> None:
    g = np.arange(10.0)
    s = Sharding.of("y")  # 10 over 4: blocks of 3, holding 3, 3, 3 and 1
    stacked = to_stacked(g, s, MESH_2x4)
    assert stacked.shape == (1, 4, 3)
    assert stacked[0, 3].tolist() == [9.0, 0.0, 0.0]
    np.testing.assert_array_equal(from_stacked(stacked, s, MESH_2x4, (10,)), g)
    shards = [device_shard(stacked, s, MESH_2x4, d, (10,)) for d in range(8)]
    assert [len(b) for b in shards] == [3, 3, 3, 1] * 2
    np.testing.assert_array_equal(from_device_shards(shards, s, MESH_2x4, (10,)), stacked)
    # a dim over both mesh dims is cut in flat blocks over their product: 5 over 8
    s2 = Sharding.of(("x", "y"))
    shards = [device_shard(to_stacked(g[:5], s2, MESH_2x4), s2, MESH_2x4, d, (5,))
              for d in range(8)]
    assert [b.tolist() for b in shards] == [[0.0], [1.0], [2.0], [3.0], [4.0], [], [], []]


def test_device_shard_is_a_copy() -> None:
    mesh = MeshShape((("x", 2),))
    stacked = to_stacked(np.arange(4.0), Sharding.of(None), mesh)
    shard = device_shard(stacked, Sharding.of(None), mesh, 1)
    shard[0] = 99
    assert stacked[0, 0] == 0
