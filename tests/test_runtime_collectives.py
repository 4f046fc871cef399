"""Collectives on stacked arrays, checked exhaustively over small meshes and layouts.

For every layout of a rank-3 tensor and every collective that applies to it (every group of
mesh dims, every axis), the result must have exactly the stacked shape of the layout the
collective's definition (`transfer`) gives, and hold the same global value. Operands are random stacked arrays,
so partial values have nontrivial terms on every device; integer-valued floats keep sums exact.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
import pytest
from stacked_cases import MESHES, all_shardings

from dtensor_compiler.ir import geometry, opdef
from dtensor_compiler.ir.sharding import MeshShape, Sharding
from dtensor_compiler.runtime.stacked import (
    check_stacked,
    expected_stacked_shape,
    from_stacked,
    to_stacked,
)
from dtensor_compiler.runtime.stacked_comm import StackedCommunicator

SHAPE = (8, 16, 24)
"""Every dim divides by every group of the test meshes (at most 8 devices)."""
UNEVEN = (7, 5, 3)
"""No dim divides by any group of the test meshes but 1: every block has padding."""

MESH_2x4 = MESHES["2x4"]


def transfer(kind: str, attrs: dict, src: Sharding, mesh: MeshShape) -> Sharding:
    collective = opdef.lookup(kind).collective
    assert collective is not None
    return collective.transfer(attrs, src, mesh)


def run(kind: str, x: np.ndarray, attrs: dict, src: Sharding, mesh: MeshShape,
        shape: tuple[int, ...] | None = None) -> np.ndarray:
    """The collective on `x`, a stacked value of global `shape` (by default: even blocks)."""
    collective = opdef.lookup(kind).collective
    assert collective is not None
    if collective.reshapes:
        if shape is None:
            shape = tuple(n * src.num_shards(i, mesh)
                          for i, n in enumerate(x.shape[len(mesh.dims):]))
        attrs = {**attrs, "block": transfer(kind, attrs, src, mesh).local_shape(shape, mesh)}
    return getattr(StackedCommunicator(mesh), kind)(x, src, **attrs)


def _groups(names: list[str]) -> Iterator[tuple[str, ...]]:
    """Every non-empty ordered group of distinct mesh dims from `names`."""
    for n in range(1, len(names) + 1):
        yield from itertools.permutations(names, n)


def _steps(s: Sharding, mesh: MeshShape) -> Iterator[tuple[str, dict]]:
    """Every collective (kind, attrs) that applies to layout `s`."""
    axes = range(s.rank)
    for group in _groups(sorted(s.partial_dims)):
        ops = {s.partial_map[m] for m in group}
        if len(ops) == 1:
            (op,) = ops
            yield "all_reduce", {"mesh_dims": group, "op": op}
            for axis in axes:
                yield "reduce_scatter", {"mesh_dims": group, "op": op, "axis": axis}
    for axis in axes:
        dims = s.dims[axis]
        for n in range(1, len(dims) + 1):
            suffix = dims[len(dims) - n:]
            yield "all_gather", {"mesh_dims": suffix, "axis": axis}
            for split in axes:
                yield "all_to_all", {"mesh_dims": suffix, "split_axis": split,
                                     "concat_axis": axis}
    free = [m for m in mesh.names if m not in s.used_mesh_dims()]
    for group in _groups(free):
        for axis in axes:
            yield "local_slice", {"mesh_dims": group, "axis": axis}
    for m in free:  # one reduction kind per layout, as the test below needs
        for op in sorted(set(s.partial_map.values()) or {"sum", "max"}):
            yield "make_partial", {"mesh_dims": (m,), "op": op}


def _random_stacked(s: Sharding, mesh: MeshShape, rng: np.random.Generator,
                    shape: tuple[int, ...]) -> np.ndarray:
    stacked = expected_stacked_shape(s.local_shape(shape, mesh), s, mesh)
    return rng.integers(-20, 20, size=stacked).astype(np.float64)


@pytest.mark.parametrize("shape", [SHAPE, UNEVEN], ids=str)
@pytest.mark.parametrize("mesh_name", sorted(MESHES))
def test_every_collective_keeps_the_value_and_makes_the_layout_transfer_says(
        mesh_name: str, shape: tuple[int, ...]) -> None:
    """Uneven blocks start with random padding, which no collective may let into the value;
    only changes whose blocks line up are planned, so only those are run."""
    mesh = MESHES[mesh_name]
    rng = np.random.default_rng(0)
    kinds_seen: set[str] = set()
    for src in all_shardings(3, mesh, partial_ops=("sum", "max")):
        if len(set(src.partial_map.values())) > 1:
            continue  # mixed pending reductions only have a value in one reduction order
        x = _random_stacked(src, mesh, rng, shape)
        value = from_stacked(x, src, mesh, shape)
        for kind, attrs in _steps(src, mesh):
            dst = transfer(kind, attrs, src, mesh)
            if not geometry.changes_align(shape, src.dims, dst.dims, mesh):
                continue
            out = run(kind, x, attrs, src, mesh, shape)
            check_stacked(out, dst, mesh)
            assert out.shape[len(mesh.dims):] == dst.local_shape(shape, mesh)
            np.testing.assert_array_equal(from_stacked(out, dst, mesh, shape), value,
                                          err_msg=f"{kind} {attrs} on {src}")
            kinds_seen.add(kind)
    assert kinds_seen == {d.name for d in opdef.collectives()}


def test_all_reduce_sums_every_device_term() -> None:
    mesh = MESHES["2x2"]
    s = Sharding.of(None, partial={"x": "sum", "y": "sum"})
    x = np.arange(4.0).reshape(2, 2, 1)
    out = run("all_reduce", x, {"mesh_dims": ("x", "y"), "op": "sum"}, s, mesh)
    assert out.shape == (1, 1, 1) and out.item() == 6.0
    out = run("all_reduce", x, {"mesh_dims": ("y",), "op": "sum"}, s, mesh)
    assert out.tolist() == [[[1.0]], [[5.0]]]


def test_all_reduce_keeps_small_integer_dtypes() -> None:
    s = Sharding.of(None, partial={"x": "sum"})
    x = np.full((4, 1), 100, dtype=np.int8)
    out = run("all_reduce", x, {"mesh_dims": ("x",), "op": "sum"}, s, MESHES["1d"])
    assert out.dtype == np.int8


def test_reduce_scatter_gives_each_device_its_block_of_the_sum() -> None:
    mesh = MESHES["1d"]
    s = Sharding.of(None, partial={"x": "sum"})
    x = np.arange(4 * 8.0).reshape(4, 8)
    out = run("reduce_scatter", x, {"mesh_dims": ("x",), "op": "sum", "axis": 0}, s, mesh)
    total = x.sum(axis=0)
    assert out.shape == (4, 2)
    for d in range(4):
        np.testing.assert_array_equal(out[d], total[2 * d: 2 * d + 2])


def test_all_gather_concatenates_blocks_in_device_order() -> None:
    s = Sharding.of(("x", "y"), None)
    g = np.arange(16).reshape(8, 2)
    out = run("all_gather", to_stacked(g, s, MESH_2x4), {"mesh_dims": ("x", "y"), "axis": 0}, s,
              MESH_2x4)
    assert out.shape == (1, 1, 8, 2)
    np.testing.assert_array_equal(out[0, 0], g)


def test_all_gather_of_the_minor_mesh_dim_keeps_the_major_one() -> None:
    s = Sharding.of(("x", "y"), None)
    g = np.arange(16).reshape(8, 2)
    out = run("all_gather", to_stacked(g, s, MESH_2x4), {"mesh_dims": ("y",), "axis": 0}, s,
              MESH_2x4)
    assert out.shape == (2, 1, 4, 2)
    np.testing.assert_array_equal(out[1, 0], g[4:])


def test_all_to_all_moves_the_split_from_one_dim_to_another() -> None:
    s = Sharding.of("y", None)
    g = np.arange(32).reshape(4, 8)
    out = run("all_to_all", to_stacked(g, s, MESH_2x4),
              {"mesh_dims": ("y",), "split_axis": 1, "concat_axis": 0}, s, MESH_2x4)
    assert out.shape == (1, 4, 4, 2)
    for y in range(4):
        np.testing.assert_array_equal(out[0, y], g[:, 2 * y: 2 * y + 2])


def test_local_slice_appends_minor_most() -> None:
    s = Sharding.of("x")
    g = np.arange(8)
    out = run("local_slice", to_stacked(g, s, MESH_2x4), {"mesh_dims": ("y",), "axis": 0}, s,
              MESH_2x4)
    # device (x=1, y=3) holds block 1 * 4 + 3 of the (x, y) split
    assert out[1, 3].tolist() == [7]


def test_collectives_reject_what_their_transfer_rejects() -> None:
    s = Sharding.of(("x", "y"), None)
    x = to_stacked(np.zeros((8, 2)), s, MESH_2x4)
    with pytest.raises(ValueError, match="end with"):
        run("all_gather", x, {"mesh_dims": ("x",), "axis": 0}, s, MESH_2x4)
    with pytest.raises(ValueError, match="pending sum"):
        run("all_reduce", x, {"mesh_dims": ("x",), "op": "sum"}, s, MESH_2x4)
    with pytest.raises(ValueError, match="already used"):
        run("local_slice", x, {"mesh_dims": ("y",), "axis": 1}, s, MESH_2x4)
    with pytest.raises(ValueError, match="mesh extents"):
        run("all_gather", x[:1], {"mesh_dims": ("y",), "axis": 0}, s, MESH_2x4)


def test_local_slice_moves_no_data() -> None:
    s = Sharding.of(None, None)
    x = to_stacked(np.arange(32.0).reshape(8, 4), s, MESH_2x4)
    sliced = run("local_slice", x, {"mesh_dims": ("x", "y"), "axis": 0}, s, MESH_2x4)
    assert np.shares_memory(sliced, x)


def test_a_negative_zero_survives_a_pending_sum() -> None:
    """Indexing along a sharded dim leaves a pending sum of the owner's element and every
    other device's identity: -0.0, since 0.0 + -0.0 is 0.0 (numpy's own sum starts from
    0.0, so the reduction over devices starts from -0.0)."""
    import dtensor_compiler as dtc

    mesh = dtc.create_mesh([("x", 8)])
    a = np.full((3, 5), -0.0)
    for fn, specs in ((lambda a: a[:, 3], [dtc.UNSHARDED, "x"]),
                      (lambda a: np.take(a, np.array([4, 0]), axis=1), [dtc.UNSHARDED, "x"]),
                      (lambda a: a[1], ["x", dtc.UNSHARDED])):
        got = np.asarray(dtc.compile(fn, in_layouts=dtc.Layout(specs, mesh))(a))
        assert np.signbit(got).all(), fn
    pending = dtc.Layout([dtc.UNSHARDED], dtc.create_mesh([("x", 4)]), partial={"x": "sum"})
    assert np.signbit(np.asarray(dtc.copy_to_mesh(np.full(4, -0.0), pending))).all()
