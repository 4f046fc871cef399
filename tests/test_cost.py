"""The alpha-beta cost model."""

from __future__ import annotations

import dataclasses

import pytest

from dtensor_compiler.cost import CostModel, Link
from dtensor_compiler.ir import opdef
from dtensor_compiler.ir.collective import Charged
from dtensor_compiler.ir.sharding import MeshShape

MESH = MeshShape((("dp", 2), ("tp", 4)))
MODEL = CostModel(default=Link(latency=1e-6, bandwidth=1e9), launch=1e-5, memory_bandwidth=1e11)


def time(model: CostModel, kind: str, mesh_dims: tuple[str, ...], mesh: MeshShape,
         nbytes: int) -> float:
    """Seconds for collective `kind` whose charged buffer holds `nbytes`."""
    collective = opdef.lookup(kind).collective
    assert collective is not None
    as_charged = dataclasses.replace(collective, charged=Charged.OUTPUT)
    return model.collective_time(as_charged, mesh_dims, mesh, nbytes, nbytes)


def test_ring_formulas() -> None:
    n, nbytes = 4, 4000
    ring = (n - 1) * 1e-6 + (n - 1) / n * nbytes / 1e9
    for kind in ("all_gather", "reduce_scatter", "all_to_all"):
        assert time(MODEL, kind, ("tp",), MESH, nbytes) == pytest.approx(1e-5 + ring)
    assert time(MODEL, "all_reduce", ("tp",), MESH, nbytes) == pytest.approx(
        1e-5 + 2 * ring)


def test_one_all_reduce_beats_the_reduce_scatter_and_all_gather_it_equals() -> None:
    rs = time(MODEL, "reduce_scatter", ("tp",), MESH, 4000)
    ag = time(MODEL, "all_gather", ("tp",), MESH, 4000)
    assert time(MODEL, "all_reduce", ("tp",), MESH, 4000) == pytest.approx(
        rs + ag - MODEL.launch)


def test_groups_over_several_mesh_dims_use_the_slowest_link() -> None:
    slow = MODEL.with_link("dp", Link(latency=1e-4, bandwidth=1e8))
    n, nbytes = 8, 80000
    expected = 1e-5 + (n - 1) * 1e-4 + (n - 1) / n * nbytes / 1e8
    assert time(slow, "all_gather", ("dp", "tp"), MESH, nbytes) == pytest.approx(
        expected)
    assert time(slow, "all_gather", ("tp",), MESH, nbytes) == time(MODEL, "all_gather", ("tp",), MESH, nbytes)
    assert slow.link("dp").latency == 1e-4 and slow.link("tp") == MODEL.default


def test_small_messages_take_the_tree() -> None:
    """Over 8 devices a tree pays 2 * 3 latencies where a ring pays 7 (all_gather,
    reduce_scatter) or 14 (all_reduce), and sends the bytes twice: it wins until the
    bandwidth term outweighs the latencies saved. all_to_all has no tree."""
    mesh = MeshShape((("x", 8),))
    for nbytes in (8, 8000, 80000):
        tree = 1e-5 + 6e-6 + 2 * nbytes / 1e9
        for kind, steps, passes in (("all_reduce", 14, 2), ("all_gather", 7, 1),
                                    ("reduce_scatter", 7, 1)):
            ring = 1e-5 + steps * 1e-6 + passes * 7 / 8 * nbytes / 1e9
            assert time(MODEL, kind, ("x",), mesh, nbytes) == pytest.approx(min(ring, tree))
        ring = 1e-5 + 7e-6 + 7 / 8 * nbytes / 1e9
        assert time(MODEL, "all_to_all", ("x",), mesh, nbytes) == pytest.approx(ring)
    assert time(MODEL, "all_reduce", ("x",), mesh, 8) < 1e-5 + 14e-6  # the tree
    assert time(MODEL, "all_gather", ("x",), mesh, 80000) == pytest.approx(
        1e-5 + 7e-6 + 7 / 8 * 80000 / 1e9)  # the ring


def test_local_layout_changes_cost_a_copy_and_groups_of_one_cost_nothing() -> None:
    assert time(MODEL, "local_slice", ("tp",), MESH, 1000) == pytest.approx(1e-8)
    assert time(MODEL, "make_partial", ("tp",), MESH, 1000) == pytest.approx(1e-8)
    one = MeshShape((("x", 1),))
    assert time(MODEL, "all_reduce", ("x",), one, 1000) == 0.0


def test_gathers_and_scatters_are_charged_every_devices_padded_block() -> None:
    rs = opdef.lookup("reduce_scatter").collective
    ag = opdef.lookup("all_gather").collective
    a2a = opdef.lookup("all_to_all").collective
    assert rs is not None and ag is not None and a2a is not None
    # even blocks: the reduce_scatter's input, the all_gather's result
    assert MODEL.collective_time(rs, ("tp",), MESH, 4000, 1000) == time(
        MODEL, "reduce_scatter", ("tp",), MESH, 4000)
    assert MODEL.collective_time(ag, ("tp",), MESH, 1000, 4000) == time(
        MODEL, "all_gather", ("tp",), MESH, 4000)
    # 10 rows of 100 bytes over tp=4: blocks of 3 rows, trimmed to 10 when gathered whole
    assert MODEL.collective_time(ag, ("tp",), MESH, 300, 1000) == time(
        MODEL, "all_gather", ("tp",), MESH, 1200)
    assert MODEL.collective_time(rs, ("tp",), MESH, 1000, 300) == time(
        MODEL, "reduce_scatter", ("tp",), MESH, 1200)
    assert MODEL.collective_time(a2a, ("tp",), MESH, 1200, 1000) == time(
        MODEL, "all_to_all", ("tp",), MESH, 1200)
