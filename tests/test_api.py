"""The eager API on the simulated mesh: DTensor, pack/unpack, relayout, copy_to_mesh,
call_with_layout, default meshes and DVariable.

Expected per-device components are computed here from the layout's shard map
(`Layout.offset_to_shard`), independently of the runtime's stacked representation.
"""

from __future__ import annotations

import inspect
import itertools
import re

import numpy as np
import pytest

import dtensor_compiler as dtc

U = dtc.UNSHARDED


def component(global_array: np.ndarray, layout: dtc.Layout, device: int) -> np.ndarray:
    """The block of `global_array` that `device` holds under a partial-free `layout`, by numpy
    slicing: a dim of n over k shards is cut in blocks of ceil(n / k), the last ones short or
    empty."""
    blocks = layout.offset_to_shard()[device]
    index = []
    for axis, block in enumerate(blocks):
        size = -(-global_array.shape[axis] // layout.num_shards(axis))
        index.append(slice(block * size, (block + 1) * size))
    return global_array[tuple(index)]


def all_layouts(mesh: dtc.Mesh, rank: int) -> list[dtc.Layout]:
    """Every partial-free layout of a rank-`rank` tensor on `mesh`."""
    out = []
    names = mesh.dim_names
    for placement in itertools.product(range(rank + 1), repeat=len(names)):
        for order in itertools.permutations(names):
            dims: list[list[str]] = [[] for _ in range(rank)]
            for name in order:
                where = placement[names.index(name)]
                if where < rank:
                    dims[where].append(name)
            specs = [U if not d else d[0] if len(d) == 1 else tuple(d) for d in dims]
            layout = dtc.Layout(specs, mesh)
            if layout not in out:
                out.append(layout)
    return out


MESHES = [[("x", 4)], [("x", 2), ("y", 3)], [("x", 2), ("y", 2), ("z", 2)]]


def arange(shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
    return np.arange(int(np.prod(shape)), dtype=dtype).reshape(shape)


# -- DTensor ------------------------------------------------------------------------------------


def test_dtensor_metadata_and_gathering():
    mesh = dtc.create_mesh([("dp", 2), ("tp", 4)])
    layout = dtc.Layout(["dp", "tp"], mesh)
    x = arange((4, 8))
    t = dtc.copy_to_mesh(x, layout)
    assert (t.shape, t.dtype, t.ndim, t.layout, t.mesh) == ((4, 8), np.float32, 2, layout, mesh)
    assert repr(t) == str(t) == (
        'DTensor({"CPU:0": [[0. 1.]\n [8. 9.]], "CPU:1": [[ 2.  3.]\n [10. 11.]], '
        '"CPU:2": [[ 4.  5.]\n [12. 13.]], "CPU:3": [[ 6.  7.]\n [14. 15.]], '
        '"CPU:4": [[16. 17.]\n [24. 25.]], "CPU:5": [[18. 19.]\n [26. 27.]], '
        '"CPU:6": [[20. 21.]\n [28. 29.]], "CPU:7": [[22. 23.]\n [30. 31.]]}, '
        f'layout="sharding_specs:dp,tp, mesh:{mesh.to_string()}", shape=(4, 8), '
        'dtype=float32)')
    assert t.device == dtc.device_name() == "/job:localhost/replica:0/task:0/device:CUSTOM:0"
    np.testing.assert_array_equal(np.asarray(t), x)
    np.testing.assert_array_equal(t.numpy(), x)
    assert np.asarray(t, dtype=np.float64).dtype == np.float64
    x[0, 0] = 100.0  # the DTensor holds its own copy
    assert np.asarray(t)[0, 0] == 0.0


def test_a_one_element_dtensor_converts_to_python_numbers_as_numpy_does():
    """float(loss) of a compiled step's 0-d result, the partial sum gathered first; truth
    values as numpy's (an object's default would make every DTensor true)."""
    mesh = dtc.create_mesh([("x", 4)])
    partial = dtc.pack([np.float32(v) for v in (0.5, 1.0, 0.0, 1.0)],
                       dtc.Layout([], mesh, partial={"x": "sum"}))
    scalar = dtc.copy_to_mesh(np.float32(2.5), dtc.Layout([], mesh))
    assert (float(scalar), int(scalar), complex(scalar), bool(scalar)) == (2.5, 2, 2.5 + 0j, True)
    assert not dtc.copy_to_mesh(np.zeros((1, 1), np.int32), dtc.Layout([U, U], mesh))
    assert float(partial) == 2.5
    loss = dtc.compile(lambda x: np.sum(x * x), in_layouts=(dtc.Layout(["x"], mesh),))
    assert float(loss(np.arange(8, dtype=np.float32))) == 140.0
    vector = dtc.copy_to_mesh(np.arange(8.0), dtc.Layout(["x"], mesh))
    with pytest.raises(ValueError, match="truth value"):
        bool(vector)
    with pytest.raises(TypeError):
        float(vector)


@pytest.mark.parametrize("expr, what", [
    (lambda t: t + 1, "operator +"),
    (lambda t: 2 * t, "operator *"),
    (lambda t: -t, "operator unary -"),
    (lambda t: t @ t, "operator @"),
    (lambda t: t < 0, "operator <"),
    (lambda t: np.ones((4, 4), np.float32) + t, "ufunc np.add"),
    (lambda t: np.exp(t), "ufunc np.exp"),
    (lambda t: np.add.reduce(t), "ufunc np.add.reduce"),
    (lambda t: np.concatenate([t, t]), "function np.concatenate"),
    (lambda t: np.sum(t), "function np.sum"),
    (lambda t: t[0], "indexing"),
])
def test_eager_math_on_a_dtensor_points_at_compile(expr, what):
    mesh = dtc.create_mesh([("x", 2)])
    t = dtc.copy_to_mesh(np.ones((4, 4), np.float32), dtc.Layout(["x", U], mesh))
    message = re.escape(what) + " is not supported on a DTensor.*@dtc.compile"
    with pytest.raises(TypeError, match=message):
        expr(t)


# -- pack / unpack ------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(12, 8), (7, 5), (1, 3)], ids=str)
@pytest.mark.parametrize("dims", MESHES, ids=str)
def test_pack_unpack_round_trips_on_every_layout(dims, shape):
    mesh = dtc.create_mesh(dims)
    rank = 2
    x = arange(shape)
    for layout in all_layouts(mesh, rank):
        expected = [component(x, layout, d) for d in range(mesh.size)]
        scattered = dtc.copy_to_mesh(x, layout)
        for got, want in zip(dtc.unpack(scattered), expected, strict=True):
            np.testing.assert_array_equal(got, want, err_msg=layout.short_text())
        packed = dtc.pack(expected, layout)
        assert packed.layout == layout and packed.shape == shape
        np.testing.assert_array_equal(np.asarray(packed), x, err_msg=layout.short_text())
        for got, want in zip(dtc.unpack(packed), expected, strict=True):
            np.testing.assert_array_equal(got, want)


def test_unpack_follows_the_docs_example():
    mesh = dtc.create_mesh([("x", 3), ("y", 2)])
    t = dtc.copy_to_mesh(np.arange(6).reshape(3, 2), dtc.Layout(["x", U], mesh))
    parts = [p.tolist() for p in dtc.unpack(t)]
    assert parts == [[[0, 1]], [[0, 1]], [[2, 3]], [[2, 3]], [[4, 5]], [[4, 5]]]


def test_pack_of_partial_sums_gathers_their_sum():
    mesh = dtc.create_mesh([("x", 2), ("y", 2)])
    layout = dtc.Layout(["x", U], mesh, partial={"y": "sum"})
    rng = np.random.default_rng(0)
    parts = [rng.standard_normal((2, 3)) for _ in range(4)]
    t = dtc.pack(parts, layout)
    expected = np.concatenate([parts[0] + parts[1], parts[2] + parts[3]])
    np.testing.assert_allclose(np.asarray(t), expected)
    for got, want in zip(dtc.unpack(t), parts, strict=True):
        np.testing.assert_array_equal(got, want)


def test_pack_of_scalars_needs_a_rank_0_layout():
    mesh = dtc.create_mesh([("x", 2)])
    t = dtc.pack([3.0, 3.0], dtc.Layout([], mesh))
    assert t.shape == () and float(np.asarray(t)) == 3.0
    with pytest.raises(dtc.LayoutError, match="CPU:0 is a scalar, but the layout has rank 1"):
        dtc.pack([3.0, 3.0], dtc.Layout(["x"], mesh))


def test_pack_errors_name_the_device():
    mesh = dtc.create_mesh([("x", 2), ("y", 2)])
    layout = dtc.Layout(["x", U], mesh)
    ok = [np.zeros((2, 4), np.float32)] * 4
    with pytest.raises(dtc.LayoutError, match="got 3 components for the 4 devices"):
        dtc.pack(ok[:3], layout)
    with pytest.raises(dtc.LayoutError, match="CPU:2 is of rank 1, but the layout has rank 2"):
        dtc.pack(ok[:2] + [np.zeros(4, np.float32)] + ok[3:], layout)
    with pytest.raises(dtc.LayoutError, match=r"CPU:1 has shape \[2, 5\]"):
        dtc.pack([ok[0], np.zeros((2, 5), np.float32)] + ok[2:], layout)
    with pytest.raises(TypeError, match="CPU:3 has dtype float64"):
        dtc.pack(ok[:3] + [np.zeros((2, 4))], layout)
    with pytest.raises(TypeError, match="CPU:0"):
        dtc.pack([np.array([["a"] * 4] * 2)] * 4, layout)
    differs = ok[:3] + [np.ones((2, 4), np.float32)]
    with pytest.raises(dtc.LayoutError, match="device 3 .* differs from the copy on device 2"):
        dtc.pack(differs, layout)
    with pytest.raises(dtc.LayoutError, match="MATCH"):
        dtc.pack(ok, dtc.Layout([dtc.MATCH, U], mesh))


def test_copy_to_mesh_checks_the_array_against_the_layout():
    mesh = dtc.create_mesh([("x", 4)])
    with pytest.raises(dtc.LayoutError, match="rank 2, the array has rank 1"):
        dtc.copy_to_mesh(np.zeros(8), dtc.Layout(["x", U], mesh))
    uneven = dtc.copy_to_mesh(np.arange(6), dtc.Layout(["x"], mesh))
    assert [b.tolist() for b in dtc.unpack(uneven)] == [[0, 1], [2, 3], [4, 5], []]


def test_pack_checks_every_block_against_the_uneven_layout():
    mesh = dtc.create_mesh([("x", 4)])
    layout = dtc.Layout(["x", U], mesh)
    blocks = [np.zeros((2, 3)), np.zeros((2, 3)), np.zeros((1, 3)), np.zeros((0, 3))]
    assert dtc.pack(blocks, layout).shape == (5, 3)
    message = (r"the component for .*device:CPU:1 has shape \[1, 3\], but its block of the "
               r"\[5, 3\] tensor laid out as \{x, -\} has shape \[2, 3\]")
    with pytest.raises(dtc.LayoutError, match=message):
        dtc.pack([np.zeros((2, 3)), np.zeros((1, 3)), np.zeros((2, 3)), np.zeros((0, 3))],
                 layout)


def test_copy_to_mesh_moves_a_dtensor_to_another_mesh():
    x = arange((4, 6))
    src = dtc.copy_to_mesh(x, dtc.Layout(["x", U], dtc.create_mesh([("x", 2)])))
    target = dtc.Layout([U, "b"], dtc.create_mesh([("a", 2), ("b", 3)]))
    moved = dtc.copy_to_mesh(src, target)
    assert moved.layout == target
    np.testing.assert_array_equal(np.asarray(moved), x)


# -- inspecting ---------------------------------------------------------------------------------


def test_fetch_check_and_is_dtensor():
    mesh = dtc.create_mesh([("x", 2), ("y", 2)])
    layout = dtc.Layout(["x", U], mesh)
    t = dtc.copy_to_mesh(np.zeros((4, 4)), layout)
    assert dtc.fetch_layout(t) == layout
    assert dtc.is_dtensor(t) and not dtc.is_dtensor(np.zeros(3))
    dtc.check_layout(t, layout)
    with pytest.raises(dtc.LayoutError, match=r"expected layout \{-, y\}.*has \{x, -\}"):
        dtc.check_layout(t, dtc.Layout([U, "y"], mesh))
    with pytest.raises(TypeError, match="got ndarray"):
        dtc.fetch_layout(np.zeros(3))
    assert dtc.fetch_layout(tensor=3) is None and dtc.fetch_layout("text") is None
    assert dtc.is_dtensor(tensor=t)
    dtc.check_layout(tensor=t, layout=layout)


def test_mesh_dims_are_named_pairs():
    mesh = dtc.create_mesh([("batch", 2), ("model", 4)])
    dim = mesh["batch"]
    assert (dim.name, dim.size) == ("batch", 2)
    name, size = mesh["model"]
    assert (name, size) == ("model", 4)


def test_component_functions_refuse_traced_arrays():
    mesh = dtc.create_mesh([("x", 2)])
    layout = dtc.Layout(["x"], mesh)
    seen = {}

    @dtc.compile(in_layouts=(layout,))
    def f(a):
        seen["is_dtensor"] = dtc.is_dtensor(a)
        for call in (lambda: dtc.unpack(a), lambda: dtc.pack([a, a], layout),
                     lambda: dtc.fetch_layout(a)):
            with pytest.raises(RuntimeError, match="must be called outside a compiled "
                                                   "function"):
                call()
        return a * 2

    np.testing.assert_array_equal(np.asarray(f(np.arange(4.0))), np.arange(4.0) * 2)
    assert seen["is_dtensor"] is True


def test_dvariable_assign_add_and_sub_run_on_the_mesh():
    mesh = dtc.create_mesh([("x", 2), ("y", 2)])
    layout = dtc.Layout(["x", "y"], mesh)
    v = dtc.DVariable(np.arange(8.0).reshape(2, 4), layout)
    assert v.assign_add(np.ones((2, 4))) is v
    v.assign_sub(dtc.copy_to_mesh(np.full((2, 4), 0.5), layout))
    np.testing.assert_array_equal(np.asarray(v), np.arange(8.0).reshape(2, 4) + 0.5)
    assert v.layout == layout
    with pytest.raises(dtc.LayoutError):
        v.assign_add(dtc.copy_to_mesh(np.ones((2, 4)), dtc.Layout(["x", U], mesh)))


# -- relayout -----------------------------------------------------------------------------------


def check_relayouts(mesh: dtc.Mesh, pairs: list[tuple[dtc.Layout, dtc.Layout]],
                    x: np.ndarray) -> None:
    for src_layout, dst_layout in pairs:
        out = dtc.relayout(dtc.copy_to_mesh(x, src_layout), dst_layout)
        note = f"{src_layout.short_text()} -> {dst_layout.short_text()}"
        assert out.layout == dst_layout, note
        for d, got in enumerate(dtc.unpack(out)):
            np.testing.assert_array_equal(got, component(x, dst_layout, d), err_msg=note)


@pytest.mark.parametrize("shape", [(12, 8), (7, 5)], ids=str)
@pytest.mark.parametrize("dims", MESHES[:2], ids=str)
def test_relayout_between_every_pair_of_layouts(dims, shape):
    mesh = dtc.create_mesh(dims)
    x = arange(shape)
    layouts = all_layouts(mesh, len(shape))
    check_relayouts(mesh, list(itertools.product(layouts, layouts)), x)


@pytest.mark.parametrize("shape", [(4, 8, 2), (9, 7, 3)], ids=str)
def test_relayout_on_a_3d_mesh(shape):
    mesh = dtc.create_mesh(MESHES[2])
    x = arange(shape)
    layouts = all_layouts(mesh, len(shape))
    pairs = list(itertools.product(layouts, layouts))
    picks = np.random.default_rng(0).choice(len(pairs), size=150, replace=False)
    check_relayouts(mesh, [pairs[i] for i in picks], x)


def test_relayout_reduces_pending_partials():
    mesh = dtc.create_mesh([("x", 2), ("y", 2)])
    rng = np.random.default_rng(1)
    parts = [rng.standard_normal((4, 6)) for _ in range(4)]
    t = dtc.pack(parts, dtc.Layout([U, U], mesh, partial={"x": "sum", "y": "sum"}))
    total = sum(parts)
    for target in ([U, U], ["x", U], [("y", "x"), U], [U, "y"]):
        out = dtc.relayout(t, dtc.Layout(target, mesh))
        np.testing.assert_allclose(np.asarray(out), total)
        assert not out.layout.partial
    kept = dtc.relayout(t, dtc.Layout([U, U], mesh, partial={"y": "sum"}))
    assert kept.layout.partial == {"y": "sum"}
    np.testing.assert_allclose(np.asarray(kept), total)


def test_relayout_match_keeps_the_input_spec():
    mesh = dtc.create_mesh([("x", 2), ("y", 2)])
    t = dtc.copy_to_mesh(arange((4, 4)), dtc.Layout(["x", "y"], mesh))
    out = dtc.relayout(t, dtc.Layout([dtc.MATCH, U], mesh))
    assert out.layout == dtc.Layout(["x", U], mesh)
    np.testing.assert_array_equal(np.asarray(out), arange((4, 4)))
    with pytest.raises(dtc.LayoutError, match="'x' is used twice"):
        dtc.relayout(t, dtc.Layout([dtc.MATCH, "x"], mesh))


def test_relayout_errors():
    mesh = dtc.create_mesh([("x", 2)])
    t = dtc.copy_to_mesh(arange((4, 4)), dtc.Layout(["x", U], mesh))
    other = dtc.create_mesh([("y", 2)])
    message = r"between meshes \(from mesh<x=2> to mesh<y=2>\); use copy_to_mesh"
    with pytest.raises(dtc.LayoutError, match=message):
        dtc.relayout(t, dtc.Layout(["y", U], other))
    with pytest.raises(dtc.LayoutError, match="rank 1, the tensor has rank 2"):
        dtc.relayout(t, dtc.Layout(["x"], mesh))
    placed = dtc.relayout(np.arange(16.0).reshape(4, 4), dtc.Layout(["x", U], mesh))
    assert placed.layout == dtc.Layout(["x", U], mesh)  # a plain array is placed, as in TF
    np.testing.assert_array_equal(np.asarray(placed), np.arange(16.0).reshape(4, 4))


def test_relayout_like_takes_the_other_tensors_layout():
    mesh = dtc.create_mesh([("x", 2), ("y", 2)])
    a = dtc.copy_to_mesh(arange((4, 4)), dtc.Layout(["x", "y"], mesh))
    b = dtc.copy_to_mesh(np.zeros((4, 4), np.float32), dtc.Layout(["y", U], mesh))
    out = dtc.relayout_like(a, b)
    assert out.layout == b.layout
    np.testing.assert_array_equal(np.asarray(out), arange((4, 4)))


# -- default mesh and call_with_layout ---------------------------------------------------------


def test_default_mesh_nests_and_restores():
    a, b = dtc.create_mesh([("a", 2)]), dtc.create_mesh([("b", 4)])
    assert dtc.get_default_mesh() is None
    with dtc.default_mesh(a) as got:
        assert got is a and dtc.get_default_mesh() is a
        with dtc.run_on(b):
            assert dtc.get_default_mesh() is b
        assert dtc.get_default_mesh() is a
    assert dtc.get_default_mesh() is None
    with pytest.raises(dtc.MeshError, match="Expect `mesh` to be `Mesh`"):
        with dtc.default_mesh("a"):  # type: ignore[arg-type]
            pass
    assert dtc.device_name() == "/job:localhost/replica:0/task:0/device:CUSTOM:0"


def test_call_with_layout_runs_under_the_mesh_and_lays_out_the_result():
    mesh = dtc.create_mesh([("x", 2), ("y", 2)])
    layout = dtc.Layout([U, "y"], mesh)
    seen = []

    def make(n):
        seen.append(dtc.get_default_mesh())
        return np.ones((n, 4))

    out = dtc.call_with_layout(make, layout, 2)
    assert seen == [mesh] and out.layout == layout
    np.testing.assert_array_equal(np.asarray(out), np.ones((2, 4)))
    sharded = dtc.call_with_layout(lambda: dtc.copy_to_mesh(arange((4, 4)),
                                                            dtc.Layout(["x", U], mesh)), layout)
    assert sharded.layout == layout
    np.testing.assert_array_equal(np.asarray(sharded), arange((4, 4)))
    assert dtc.call_with_layout(lambda: 7, None) == 7


def test_create_distributed_mesh_with_one_client_is_create_mesh():
    dims = [("x", 2), ("y", 2)]
    with pytest.raises(ValueError, match="Accelerators are uninitialized"):
        dtc.create_distributed_mesh(dims)
    dtc.initialize_accelerator_system(num_logical_cpu_devices=4)
    try:
        assert dtc.create_distributed_mesh(dims) == dtc.create_mesh(dims)
    finally:
        dtc.shutdown_accelerator_system()


# -- DVariable ----------------------------------------------------------------------------------


@pytest.fixture
def mesh22() -> dtc.Mesh:
    return dtc.create_mesh([("x", 2), ("y", 2)])


def test_dvariable_takes_the_layout_of_its_initial_value(mesh22):
    layout = dtc.Layout(["x", U], mesh22)
    t = dtc.copy_to_mesh(arange((4, 4)), layout)
    v = dtc.DVariable(t, name="w")
    assert v.layout == layout and v.read_value() is t and v.name == "w"
    assert (v.shape, v.dtype, v.save_as_bf16) == ((4, 4), np.float32, False)
    assert dtc.fetch_layout(v) == layout and dtc.is_dtensor(v)
    np.testing.assert_array_equal(np.asarray(v), arange((4, 4)))


def test_dvariable_from_an_array_needs_a_layout(mesh22):
    layout = dtc.Layout([U, "y"], mesh22)
    v = dtc.DVariable([[1, 2], [3, 4]], layout=layout, dtype=np.float64)
    assert v.layout == layout and v.dtype == np.float64
    np.testing.assert_array_equal(np.asarray(v), [[1.0, 2.0], [3.0, 4.0]])
    with pytest.raises(dtc.LayoutError, match="Neither layout nor DTensor initial value are provided"):
        dtc.DVariable(np.zeros((2, 2)))


def test_dvariable_rejects_a_conflicting_layout(mesh22):
    t = dtc.copy_to_mesh(arange((4, 4)), dtc.Layout(["x", U], mesh22))
    with pytest.raises(dtc.LayoutError,
                       match=r"Conflicting layout are provided.*\{x, -\}.*\{-, x\}"):
        dtc.DVariable(t, layout=dtc.Layout([U, "x"], mesh22))
    assert dtc.DVariable(t, layout=dtc.Layout(["x", U], mesh22)).layout == t.layout


def test_dvariable_assign_keeps_the_layout(mesh22):
    layout = dtc.Layout(["x", U], mesh22)
    v = dtc.DVariable(np.zeros((4, 4), np.float32), layout=layout)
    new = dtc.copy_to_mesh(arange((4, 4)), layout)
    assert v.assign(new) is v and v.read_value() is new
    with pytest.raises(dtc.LayoutError, match=r"expected layout \{x, -\}"):
        v.assign(dtc.copy_to_mesh(arange((4, 4)), dtc.Layout(["y", U], mesh22)))
    v.assign(np.full((4, 4), 2.0, np.float32))
    assert v.layout == layout
    np.testing.assert_array_equal(np.asarray(v), np.full((4, 4), 2.0))
    with pytest.raises(ValueError, match=r"float32\[4, 2\].*float32\[4, 4\]"):
        v.assign(np.zeros((4, 2), np.float32))
    with pytest.raises(TypeError, match="on a DVariable.*@dtc.compile"):
        _ = v + 1


def test_a_dvariable_a_compiled_function_closes_over_is_refused_at_its_line(mesh22):
    """Read while tracing, its value would be a constant of the program and later assigns
    would be missed (the program is cached): it must be an argument, read at every call."""
    layout = dtc.Layout(["x", U], mesh22)
    v = dtc.DVariable(np.ones((4, 4), np.float32), layout=layout, name="w")
    line = inspect.currentframe().f_lineno  # type: ignore[union-attr]
    reads = [lambda a: a + v, lambda a: a + v.numpy(), lambda a: a + v.read_value()]
    for read in reads:
        with pytest.raises(dtc.TraceError, match=rf"test_api.py:{line + 1}: a compiled function "
                           r"reads the DVariable 'w' \(.*\) without taking it as an argument"):
            dtc.compile(read)(np.ones((4, 4), np.float32))
    step = dtc.compile(lambda a, w: a + w)
    np.testing.assert_array_equal(np.asarray(step(np.ones((4, 4), np.float32), v)), 2.0)
    v.assign(np.full((4, 4), 5.0, np.float32))
    np.testing.assert_array_equal(np.asarray(step(np.ones((4, 4), np.float32), v)), 6.0)
    np.testing.assert_array_equal(v.numpy(), 5.0)  # (outside a trace a read is a read)


def test_traced_relayout_of_the_wrong_rank_names_the_users_line(mesh22):
    @dtc.compile(in_layouts=(dtc.Layout(["x", U], mesh22),))
    def f(a):
        return dtc.relayout(a * 2, dtc.Layout(["x"], mesh22))  # the line the error names

    line = f.__wrapped__.__code__.co_firstlineno + 2  # after the decorator and the def
    with pytest.raises(dtc.LayoutError) as e:
        f.lower(dtc.TensorSpec((4, 4)))
    assert str(e.value) == (f"tests/test_api.py:{line}: layout {{x}} has rank 1, the tensor "
                            "has rank 2")
