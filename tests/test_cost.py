"""The alpha-beta cost model."""

from __future__ import annotations

import dataclasses

import pytest

from dtensor_compiler.cost import CostModel, Link
from dtensor_compiler.ir import opdef
from dtensor_compiler.ir.collective import Algorithm, Charged
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


def test_the_fastest_algorithm_is_charged() -> None:
    """Over 4 devices with latency 1 us and 1 GB/s: the ring pays 3 latencies per pass,
    halving and doubling 2; all_reduce may also exchange the whole buffer twice, all_to_all
    run Bruck's algorithm (2 steps of half the buffer)."""
    n, steps = 4, 2
    for nbytes in (8, 4000, 400_000):
        share = (n - 1) / n * nbytes / 1e9
        halving = steps * 1e-6 + share
        for kind in ("all_gather", "reduce_scatter"):
            assert time(MODEL, kind, ("tp",), MESH, nbytes) == pytest.approx(1e-5 + halving)
        whole = steps * (1e-6 + nbytes / 1e9)
        assert time(MODEL, "all_reduce", ("tp",), MESH, nbytes) == pytest.approx(
            1e-5 + min(2 * halving, whole))
        ring, bruck = (n - 1) * 1e-6 + share, steps * (1e-6 + nbytes / 2e9)
        assert time(MODEL, "all_to_all", ("tp",), MESH, nbytes) == pytest.approx(
            1e-5 + min(ring, bruck))
    # the smallest all_reduce exchanges its buffer whole; a big one halves and doubles
    assert time(MODEL, "all_reduce", ("tp",), MESH, 8) == pytest.approx(1e-5 + 2 * (1e-6 + 8e-9))
    assert time(MODEL, "all_reduce", ("tp",), MESH, 400_000) == pytest.approx(
        1e-5 + 2 * (2e-6 + 0.75 * 4e-4))


def test_the_ring_is_charged_where_it_is_the_only_algorithm() -> None:
    collective = opdef.lookup("all_gather").collective
    assert collective is not None
    ring_only = dataclasses.replace(collective, charged=Charged.OUTPUT,
                                    algorithms=frozenset({Algorithm.RING}))
    n, nbytes = 8, 4000
    assert MODEL.collective_time(ring_only, ("dp", "tp"), MESH, nbytes, nbytes) == \
        pytest.approx(1e-5 + (n - 1) * 1e-6 + (n - 1) / n * nbytes / 1e9)


def test_one_all_reduce_beats_the_reduce_scatter_and_all_gather_it_equals() -> None:
    for nbytes in (4000, 400_000):
        rs = time(MODEL, "reduce_scatter", ("tp",), MESH, nbytes)
        ag = time(MODEL, "all_gather", ("tp",), MESH, nbytes)
        assert time(MODEL, "all_reduce", ("tp",), MESH, nbytes) <= rs + ag - MODEL.launch


def test_groups_over_several_mesh_dims_use_the_slowest_link() -> None:
    slow = MODEL.with_link("dp", Link(latency=1e-4, bandwidth=1e8))
    n, nbytes = 8, 80000
    expected = 1e-5 + 3 * 1e-4 + (n - 1) / n * nbytes / 1e8
    assert time(slow, "all_gather", ("dp", "tp"), MESH, nbytes) == pytest.approx(
        expected)
    assert time(slow, "all_gather", ("tp",), MESH, nbytes) == time(MODEL, "all_gather", ("tp",), MESH, nbytes)
    assert slow.link("dp").latency == 1e-4 and slow.link("tp") == MODEL.default


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
