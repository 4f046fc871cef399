"""`dtc.compile`: decorator forms, caching, mesh choice, argument errors, `lower()` and its
stages, IR and collective records, and values against numpy."""

from __future__ import annotations

import inspect
import re

import numpy as np
import pytest

import dtensor_compiler as dtc
from dtensor_compiler.cost import DEFAULT_COST_MODEL
from dtensor_compiler.errors import Location, source_path
from dtensor_compiler.ir.core import Level
from dtensor_compiler.ir.ops import collectives

U = dtc.UNSHARDED
STAGES = ["trace", "simplify", "propagate-layouts", "expand-checkpoints", "insert-collectives",
          "narrow-early", "mask-padding", "localize"]


@pytest.fixture
def mesh() -> dtc.Mesh:
    return dtc.create_mesh([("dp", 2), ("tp", 4)])


def rand(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def mlp_layouts(mesh: dtc.Mesh) -> dict[str, object]:
    return {
        "in_layouts": (dtc.Layout(["dp", U], mesh), dtc.Layout([U, "tp"], mesh),
                       dtc.Layout(["tp", U], mesh)),
        "out_layouts": dtc.Layout(["dp", U], mesh),
    }


def mlp(x, w1, w2):
    h = np.tanh(x @ w1)
    return h @ w2


MLP_SECOND_MATMUL = Location(source_path(__file__), inspect.getsourcelines(mlp)[1] + 2)


MLP_AFTER_INSERT_COLLECTIVES = """\
mesh<dp=2, tp=4>
func @mlp(%x: f32[16,8] @ {dp, -}, %w1: f32[8,32] @ {-, tp}, %w2: f32[32,8] @ {tp, -}) -> (f32[16,8] @ {dp, -}) {
  %0 = matmul %x, %w1 : f32[16,32] @ {dp, tp}
  %1 = tanh %0 : f32[16,32] @ {dp, tp}
  %2 = matmul %1, %w2 : f32[16,8] @ {dp, -} partial(tp:sum)
  %3 = all_reduce %2 {mesh_dims = [tp], op = sum} : f32[16,8] @ {dp, -}  // why: out_layouts[0] of mlp; matmul at MATMUL_LINE left a pending sum over tp
  return %3
}
""".replace("MATMUL_LINE", str(MLP_SECOND_MATMUL))


def mlp_inputs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return rand(16, 8, seed=1), rand(8, 32, seed=2), rand(32, 8, seed=3)


# -- decorator forms and values -----------------------------------------------------------------


def test_the_three_ways_to_compile_agree(mesh):
    x, w1, w2 = mlp_inputs()
    expected = mlp(x, w1, w2)

    @dtc.compile
    def bare(x, w1, w2):
        return mlp(x, w1, w2)

    @dtc.compile(**mlp_layouts(mesh), verify=True)
    def configured(x, w1, w2):
        return mlp(x, w1, w2)

    direct = dtc.compile(mlp, **mlp_layouts(mesh), verify=True)
    for f in (bare, configured, direct):
        assert isinstance(f, dtc.CompiledFunction)
        out = f(x, w1, w2)
        assert isinstance(out, dtc.DTensor) and out.shape == (16, 8)
        np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-5, atol=1e-5)
    assert direct(x, w1, w2).layout == dtc.Layout(["dp", U], mesh)
    assert direct.__name__ == "mlp" and direct.__wrapped__ is mlp


def test_dtensor_arguments_keep_their_layouts(mesh):
    x, w1, w2 = mlp_inputs()
    layouts = mlp_layouts(mesh)["in_layouts"]
    args = [dtc.copy_to_mesh(a, lay) for a, lay in zip((x, w1, w2), layouts)]
    f = dtc.compile(mlp, verify=True)
    low = f.lower(*args)
    assert low.in_layouts == layouts
    np.testing.assert_allclose(np.asarray(f(*args)), mlp(x, w1, w2), rtol=1e-5, atol=1e-5)


def test_tuple_results_and_out_layout_entries(mesh):
    @dtc.compile(in_layouts=dtc.Layout(["dp", "tp"], mesh),
                 out_layouts=(dtc.Layout([U, U], mesh), None), verify=True)
    def two(a):
        return a * 2.0, np.exp(a)

    a = rand(4, 8)
    doubled, exp = two(a)
    assert doubled.layout == dtc.Layout([U, U], mesh)
    np.testing.assert_allclose(np.asarray(doubled), a * 2.0, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(exp), np.exp(a), rtol=1e-6)


def test_results_do_not_alias_the_arguments():
    a = rand(4, 4)
    out = dtc.compile(lambda a: a, verify=True)(a)
    a[0, 0] = 100.0
    assert np.asarray(out)[0, 0] != 100.0


def test_dvariable_arguments_read_as_their_value(mesh):
    layout = dtc.Layout(["dp", U], mesh)
    v = dtc.DVariable(rand(4, 4), layout=layout)
    out = dtc.compile(lambda a: a + 1.0, verify=True)(v)
    np.testing.assert_allclose(np.asarray(out), np.asarray(v) + 1.0)


# -- caching ------------------------------------------------------------------------------------


def test_programs_are_cached_per_argument_types(mesh):
    traces = []

    @dtc.compile(verify=True)
    def f(a, b):
        traces.append(1)
        return a + b

    a, b = rand(4, 8), rand(4, 8, seed=1)
    f(a, b)
    f(a + 1, b)
    assert len(traces) == 1
    assert f.lower(dtc.TensorSpec((4, 8)), dtc.TensorSpec((4, 8), np.float32)) is f.lower(a, b)
    assert len(traces) == 1
    f(a.astype(np.float64), b)
    assert len(traces) == 2
    f(rand(8, 8), rand(8, 8))
    assert len(traces) == 3
    f(dtc.copy_to_mesh(a, dtc.Layout(["dp", U], mesh)), b)
    f(dtc.copy_to_mesh(a + 1, dtc.Layout(["dp", U], mesh)), b)
    assert len(traces) == 4
    f(dtc.copy_to_mesh(a, dtc.Layout([U, "tp"], mesh)), b)
    assert len(traces) == 5


# -- the mesh -----------------------------------------------------------------------------------


def test_the_mesh_comes_from_layouts_then_dtensors_then_the_default(mesh):
    f = dtc.compile(lambda a: a * 2.0)
    a = rand(8, 8)
    assert f.lower(a).mesh == dtc.create_mesh()
    with dtc.default_mesh(mesh):
        assert f.lower(a).mesh == mesh
        other = dtc.create_mesh([("r", 2)])
        assert f.lower(dtc.copy_to_mesh(a, dtc.Layout(["r", U], other))).mesh == other
    g = dtc.compile(lambda a: a * 2.0, in_layouts=dtc.Layout(["dp", U], mesh))
    assert g.lower(a).mesh == mesh


def test_layouts_on_two_meshes_are_rejected(mesh):
    other = dtc.create_mesh([("r", 2)])
    with pytest.raises(dtc.LayoutError, match="one mesh.*mesh<dp=2, tp=4>.*mesh<r=2>"):
        dtc.compile(mlp, in_layouts=(dtc.Layout(["dp", U], mesh), None, None),
                    out_layouts=dtc.Layout(["r", U], other))


# -- argument errors ----------------------------------------------------------------------------


def test_argument_errors_name_the_argument(mesh):
    f = dtc.compile(mlp, **mlp_layouts(mesh))
    x, w1, w2 = mlp_inputs()
    with pytest.raises(dtc.TraceError, match=r"mlp\(x, w1, w2\).*'w2'"):
        f(x, w1)
    with pytest.raises(dtc.LayoutError, match=r"argument 'w1' of shape \[32\].*rank 2"):
        f(x, w1[0], w2)
    np.testing.assert_allclose(np.asarray(f(x[:15], w1, w2)), mlp(x[:15], w1, w2), rtol=1e-4,
                               atol=1e-5)
    with pytest.raises(dtc.TraceError, match="argument 'w2' must be a numeric array"):
        f(x, w1, "w2")
    with pytest.raises(dtc.TraceError, match="argument 'w2' must be a numeric array"):
        f(x, w1, None)
    with pytest.raises(dtc.TraceError, match="positionally"):
        f(x, w1, w2=w2)
    wrong = dtc.copy_to_mesh(x, dtc.Layout([U, U], mesh))
    with pytest.raises(dtc.LayoutError, match=r"argument 'x' has layout \{-, -\}.*\{dp, -\}"):
        f(wrong, w1, w2)
    with pytest.raises(dtc.LayoutError, match="in_layouts has 3 entries.*2 arguments"):
        dtc.compile(lambda *a: a[0], **mlp_layouts(mesh))(x, w1)
    with pytest.raises(dtc.LayoutError, match="MATCH"):
        dtc.compile(mlp, in_layouts=dtc.Layout([dtc.MATCH, U], mesh))


def test_specs_are_kept_for_tools(mesh):
    specs = (dtc.TensorSpec((8, 4)),)
    f = dtc.compile(lambda a: a, in_layouts=dtc.Layout(["dp", U], mesh), specs=specs)
    assert f.specs == specs and dtc.compile(mlp).specs is None
    assert f.lower(*f.specs).in_layouts == (dtc.Layout(["dp", U], mesh),)
    with pytest.raises(TypeError, match="TensorSpecs"):
        dtc.compile(mlp, specs=((8, 4),))


def test_backends_and_pipelines_are_checked_when_compiling():
    with pytest.raises(dtc.DTensorError, match="unknown backend 'cuda'"):
        dtc.compile(mlp, backend="cuda")
    with pytest.raises(dtc.PassError, match="unknown pass 'fold-everything'"):
        dtc.compile(mlp, pipeline="simplify,fold-everything")


# -- lower() ------------------------------------------------------------------------------------


def test_lowered_megatron_mlp(mesh):
    f = dtc.compile(mlp, **mlp_layouts(mesh), verify=True)
    specs = [dtc.TensorSpec(a.shape) for a in mlp_inputs()]
    low = f.lower(*specs)
    assert low.stages == STAGES
    assert low.ir() == low.ir("final") == low.ir("localize")
    assert low.ir("insert-collectives") == MLP_AFTER_INSERT_COLLECTIVES
    assert low.ir().startswith("mesh<dp=2, tp=4> local\n")
    assert low.module.level is Level.LOCAL
    assert low.kernel_sources() == {}
    (ar,) = low.collectives()
    assert (ar.kind, ar.mesh_dims) == ("all_reduce", ("tp",))
    assert ar.bytes == 8 * 8 * 4  # the [16/dp, 8] f32 result block of one device
    assert low.comm_bytes() == ar.bytes
    assert ar.seconds == DEFAULT_COST_MODEL.collective_time(
        collectives.ALL_REDUCE.collective, ("tp",), mesh.mesh_shape(), ar.bytes, ar.bytes)
    assert ar.op == MLP_AFTER_INSERT_COLLECTIVES.splitlines()[5].strip()
    here = re.escape(str(Location(source_path(__file__), 0))[:-2])
    assert re.fullmatch(f"out_layouts\\[0\\] of mlp; matmul at {here}:\\d+ left a pending "
                        "sum over tp", ar.reason)
    assert low.in_layouts == mlp_layouts(mesh)["in_layouts"]
    assert low.out_layouts == (dtc.Layout(["dp", U], mesh),)
    with pytest.raises(ValueError, match=r"no stage 'bogus'; stages are \['trace', 'simplify'"):
        low.ir("bogus")
    x, w1, w2 = mlp_inputs()
    np.testing.assert_allclose(np.asarray(low.run(x, w1, w2)), mlp(x, w1, w2), rtol=1e-5,
                               atol=1e-5)
    with pytest.raises(dtc.TraceError, match=r"argument 'x' is float64\[16, 8\]"):
        low.run(x.astype(np.float64), w1, w2)


def test_a_custom_pipeline_names_the_stages(mesh):
    f = dtc.compile(mlp, **mlp_layouts(mesh), pipeline="propagate-layouts,insert-collectives,"
                    "localize", verify=True)
    low = f.lower(*mlp_inputs())
    assert low.stages == ["trace", "propagate-layouts", "insert-collectives", "localize"]
    assert [c.kind for c in low.collectives()] == ["all_reduce"]


def test_relayout_inside_a_compiled_function(mesh):
    def gather_rows(a):
        b = np.exp(a)
        return dtc.relayout(b, dtc.Layout([U, "tp"], mesh))

    line = inspect.getsourcelines(gather_rows)[1] + 2
    f = dtc.compile(gather_rows, in_layouts=dtc.Layout(["dp", "tp"], mesh), verify=True)
    a = rand(4, 8)
    out = f(a)
    assert out.layout == dtc.Layout([U, "tp"], mesh)
    np.testing.assert_allclose(np.asarray(out), np.exp(a), rtol=1e-6)
    (gather,) = f.lower(a).collectives()
    assert (gather.kind, gather.mesh_dims, gather.bytes) == ("all_gather", ("dp",), 4 * 2 * 4)
    assert f"dtc.relayout at {Location(source_path(__file__), line)}" in gather.reason


def test_relayout_match_and_mesh_checks_inside_a_compiled_function(mesh):
    a = rand(4, 8)
    keep_rows = dtc.compile(lambda a: dtc.relayout(a, dtc.Layout([dtc.MATCH, U], mesh)),
                            in_layouts=dtc.Layout(["dp", "tp"], mesh), verify=True)
    assert keep_rows.lower(a).out_layouts == (dtc.Layout(["dp", U], mesh),)
    np.testing.assert_array_equal(np.asarray(keep_rows(a)), a)
    unknown = dtc.compile(lambda a: dtc.relayout(a * 2.0, dtc.Layout([dtc.MATCH, U], mesh)),
                          in_layouts=dtc.Layout(["dp", "tp"], mesh))
    with pytest.raises(dtc.LayoutError, match="MATCH inside a compiled function"):
        unknown(a)
    other = dtc.create_mesh([("r", 2)])
    elsewhere = dtc.compile(lambda a: dtc.relayout(a, dtc.Layout(["r", U], other)),
                            in_layouts=dtc.Layout(["dp", "tp"], mesh))
    with pytest.raises(dtc.LayoutError, match="mesh<r=2> inside a function compiled for "
                                              "mesh<dp=2, tp=4>"):
        elsewhere(a)


def test_a_function_returning_something_else_than_arrays_is_named() -> None:
    def returns_none(a):
        np.exp(a)

    line = inspect.getsourcelines(returns_none)[1]
    with pytest.raises(dtc.TraceError, match=rf"{re.escape(str(Location(source_path(__file__), line)))}: "
                       r"returns_none returned a NoneType; a compiled function must return "
                       r"arrays"):
        dtc.compile(returns_none)(rand(4))


def test_relayout_like_a_traced_value_takes_the_layout_propagation_gives_it(mesh) -> None:
    """The target is known only once layouts are chosen: `b * 2` gets b's {tp}, so `a` is
    relayouted from {dp} to {tp}, planned like any relayout (an all_gather over dp, then a
    local slice over tp, which moves nothing)."""
    f = dtc.compile(lambda a, b: dtc.relayout_like(a, b * 2),
                    in_layouts=(dtc.Layout(["dp"], mesh), dtc.Layout(["tp"], mesh)))
    a, b = rand(8), rand(8)
    low = f.lower(a, b)
    assert "relayout_like %a, %" in low.ir("trace")
    assert "relayout_like" not in low.ir("propagate-layouts")
    assert [(c.kind, c.mesh_dims) for c in low.collectives()] == [("all_gather", ("dp",))]
    assert "local_slice %" in low.ir("insert-collectives")
    out = f(a, b)
    assert out.layout == dtc.Layout(["tp"], mesh)
    np.testing.assert_array_equal(np.asarray(out), a)


def test_relayout_like_needs_arrays_of_one_function_and_one_rank(mesh) -> None:
    layout = dtc.Layout(["dp"], mesh)
    with pytest.raises(dtc.ShapeError, match=r"test_compile.py:\d+: relayout_like: a value of "
                                             "rank 1 cannot take the layout of a value of rank 2"):
        dtc.compile(lambda a, b: dtc.relayout_like(a, b), in_layouts=(layout, None))(
            rand(8), rand(8, 4))
    with pytest.raises(dtc.TraceError, match="relayout_like inside a compiled function "
                                             "relayouts an array of that function"):
        dtc.compile(lambda b: dtc.relayout_like(np.ones(8), b), in_layouts=(layout,))(rand(8))


def test_lambdas_are_named_lambda_everywhere(mesh) -> None:
    f = dtc.compile(lambda a: a, in_layouts=(dtc.Layout(["dp"], mesh),))
    assert f.lower(rand(8)).ir("trace").splitlines()[1].startswith("func @lambda(")
    with pytest.raises(dtc.TraceError, match=r"^lambda\(a\): too many positional arguments"):
        f(rand(8), rand(8))


def test_repeated_calls_take_the_cached_program_of_their_own_mesh_and_layouts() -> None:
    f = dtc.compile(lambda x: x * 2)
    x = np.arange(8.0)
    one, two = dtc.create_mesh([("a", 2)]), dtc.create_mesh([("b", 4)])
    with dtc.default_mesh(one):
        assert f(x).mesh == one and f(x).mesh == one
    with dtc.default_mesh(two):
        assert f(x).mesh == two
    sharded = dtc.copy_to_mesh(x, dtc.Layout(["b"], two))
    replicated = dtc.copy_to_mesh(x, dtc.Layout.replicated(two, 1))
    assert f(sharded).layout == sharded.layout and f(replicated).layout == replicated.layout
    assert f(sharded).layout == sharded.layout
    np.testing.assert_array_equal(np.asarray(f(sharded)), x * 2)


def test_a_result_never_aliases_the_callers_array() -> None:
    f = dtc.compile(lambda x: x.reshape(2, 4), in_layouts=dtc.Layout.replicated(
        dtc.create_mesh([("a", 2)]), 1))
    x = np.arange(8.0)
    for _ in range(2):  # the first call and a cached one
        y = f(x)
        x[0] = 100.0
        assert np.asarray(y)[0, 0] == 0.0
        x[0] = 0.0


def test_a_pending_reduction_of_another_kind_is_created_after_the_open_ones_are_reduced(
        ) -> None:
    mesh = dtc.create_mesh([("dp", 2), ("tp", 4)])
    U = dtc.UNSHARDED
    ins = (dtc.Layout([U, "tp"], mesh), dtc.Layout(["tp", U], mesh))
    rng = np.random.default_rng(0)
    x = rng.integers(1, 4, (4, 8)).astype(np.float32)
    w = rng.integers(1, 4, (8, 4)).astype(np.float32)
    prod = dtc.compile(lambda x, w: x @ w, in_layouts=ins,
                       out_layouts=dtc.Layout([U, U], mesh, partial={"dp": "prod"}))
    np.testing.assert_array_equal(np.asarray(prod(x, w)), x @ w)
    kinds = [c.kind for c in prod.lower(x, w).collectives()]
    assert kinds == ["all_reduce"]  # then a local make_partial
    xi, wi = x.astype(np.int32), w.astype(np.int32)
    top = dtc.compile(lambda x, w: x @ w, in_layouts=ins,
                      out_layouts=dtc.Layout([U, U], mesh, partial={"dp": "max"}))
    np.testing.assert_array_equal(np.asarray(top(xi, wi)), xi @ wi)
    summed = dtc.relayout(dtc.copy_to_mesh(x, dtc.Layout([U, U], mesh)),
                          dtc.Layout([U, U], mesh, partial={"tp": "sum"}))
    eager = dtc.relayout(summed, dtc.Layout([U, U], mesh, partial={"dp": "prod"}))
    np.testing.assert_array_equal(np.asarray(eager), x)


def test_several_pending_reductions_have_one_value_everywhere() -> None:
    """Pending reductions apply in mesh-dim order: here the max over dp, then the sum over
    tp, whether the value is gathered, relaid out or computed on."""
    mesh = dtc.create_mesh([("dp", 4), ("tp", 2)])
    U = dtc.UNSHARDED
    parts = [np.array([float(i)]) for i in range(8)]  # device dp * 2 + tp holds its id
    mixed = dtc.pack(parts, dtc.Layout([U], mesh, partial={"dp": "max", "tp": "sum"}))
    expected = max(0, 2, 4, 6) + max(1, 3, 5, 7)
    assert np.asarray(mixed).tolist() == [expected]
    assert np.asarray(dtc.relayout(mixed, dtc.Layout([U], mesh))).tolist() == [expected]
    assert np.asarray(dtc.compile(lambda x: x * 1.0)(mixed)).tolist() == [expected]
    swapped = dtc.pack(parts, dtc.Layout([U], mesh, partial={"dp": "sum", "tp": "max"}))
    assert np.asarray(swapped).tolist() == [max(0 + 2 + 4 + 6, 1 + 3 + 5 + 7)]
    assert np.asarray(dtc.relayout(swapped, dtc.Layout([U], mesh))).tolist() == [16.0]


def test_python_number_arguments_keep_numpys_weak_typing() -> None:
    f = dtc.compile(lambda x, s: x * s)
    x = np.ones(4, np.float32)
    for s in (2.0, 3, True, 2.0):
        out = np.asarray(f(x, s))
        assert out.dtype == (x * s).dtype == np.float32
        np.testing.assert_array_equal(out, x * s)
    assert np.asarray(f(x, np.float64(2.0))).dtype == np.float64  # numpy scalars are strong
    assert len(f.lower(x, 2.0).module.main.args) == 1  # the number is a constant
    mesh = dtc.create_mesh([("a", 2)])
    with pytest.raises(dtc.LayoutError, match="'s' is a Python number"):
        dtc.compile(lambda x, s: x * s, in_layouts=(None, dtc.Layout([], mesh)))(x, 2.0)


def test_a_pending_input_returned_unchanged_is_reduced_unless_an_out_layout_keeps_it() -> None:
    mesh = dtc.create_mesh([("dp", 2), ("tp", 4)])
    pending = dtc.Layout([dtc.UNSHARDED], mesh, partial={"tp": "sum"})
    x = dtc.relayout(dtc.copy_to_mesh(np.arange(4.0), dtc.Layout.replicated(mesh, 1)), pending)
    returned = dtc.compile(lambda x: x)(x)
    assert returned.layout == dtc.Layout.replicated(mesh, 1)
    np.testing.assert_array_equal(np.asarray(returned), np.arange(4.0))
    kept = dtc.compile(lambda x: x, out_layouts=pending)(x)
    assert kept.layout == pending


def test_a_pending_max_of_complex_values_is_refused_at_compile_time():
    mesh = dtc.create_mesh([("dp", 2), ("tp", 4)])
    pending_max = dtc.Layout([dtc.UNSHARDED], mesh, partial={"tp": "max"})
    spec = dtc.TensorSpec((8,), np.complex64)
    f = dtc.compile(in_layouts=(pending_max,))(lambda a: a * 2)
    with pytest.raises(dtc.LayoutError) as e:
        f.lower(spec)
    assert str(e.value) == ("argument 'a' is c64[8] @ {-} partial(tp:max): a complex value "
                            "cannot be pending a max over tp, complex numbers have no order")

    def g(a):
        return dtc.relayout(a, dtc.Layout([dtc.UNSHARDED], mesh, partial={"tp": "min"}))

    line = g.__code__.co_firstlineno + 1
    with pytest.raises(dtc.LayoutError) as e:
        dtc.compile(g, in_layouts=(dtc.Layout([dtc.UNSHARDED], mesh),)).lower(spec)
    assert str(e.value) == (f"tests/test_compile.py:{line}: relayout is c64[8] @ {{-}} "
                            "partial(tp:min): a complex value cannot be pending a min over tp, "
                            "complex numbers have no order")
    real = dtc.compile(in_layouts=(pending_max,))(lambda a: a * 2)
    assert real.lower(dtc.TensorSpec((8,), np.float32)).stages[-1] == "localize"


def test_explanations_name_the_numpy_function_the_user_called() -> None:
    """`np.mean` is a reduce_sum and a divide in the IR; the reason names `mean` and its
    line, and a function used inside another (`mean` inside `var`) is named by the outer."""
    mesh = dtc.create_mesh([("dp", 2), ("tp", 4)])
    row = dtc.Layout([dtc.UNSHARDED, "tp"], mesh)

    def centre(x):
        return x - np.mean(x, axis=1, keepdims=True)

    def spread(x):
        return x / np.var(x, axis=1, keepdims=True)

    line = centre.__code__.co_firstlineno + 1
    low = dtc.compile(centre, in_layouts=row, out_layouts=row).lower(
        dtc.TensorSpec((8, 1 << 18), np.float32))
    [reason] = [c.reason for c in low.collectives()]
    assert reason == (f"subtract at tests/test_compile.py:{line} needs the mean result from "
                      f"tests/test_compile.py:{line} as {{-, -}}: subtract cannot take a pending "
                      "sum over tp")
    low = dtc.compile(spread, in_layouts=row, out_layouts=row).lower(
        dtc.TensorSpec((8, 1 << 18), np.float32))
    assert all("the var result" in c.reason for c in low.collectives())


def test_results_come_back_in_the_structure_the_function_returned_them_in() -> None:
    """Nested tuples, lists, dicts (in key order, as JAX flattens them) and named tuples of
    arrays; a 1-tuple stays a tuple. out_layouts nest the same way, or are given flat, one
    per array."""
    from collections import namedtuple
    pair = namedtuple("pair", "first second")
    mesh = dtc.create_mesh([("x", 4)])
    x = rand(8)

    def fn(x):
        return x, (x * 2, [x + 1]), {"b": np.sum(x), "a": x - 1}, pair(x, -x)

    nested = (None, (dtc.Layout(["x"], mesh), [None]), {"a": dtc.Layout(["x"], mesh), "b": None},
              pair(None, None))
    flat = (None, dtc.Layout(["x"], mesh), None, dtc.Layout(["x"], mesh), None, None, None)
    for out_layouts in (nested, flat):
        got = dtc.compile(fn, out_layouts=out_layouts)(x)
        want = fn(x)
        assert isinstance(got, tuple) and isinstance(got[1][1], list)
        assert isinstance(got[2], dict) and list(got[2]) == ["a", "b"]
        assert type(got[3]) is pair
        assert got[1][0].layout == got[2]["a"].layout == dtc.Layout(["x"], mesh)
        leaves = [got[0], got[1][0], got[1][1][0], got[2]["a"], got[2]["b"], *got[3]]
        expected = [want[0], want[1][0], want[1][1][0], want[2]["a"], want[2]["b"], *want[3]]
        for g, w in zip(leaves, expected):
            np.testing.assert_allclose(np.asarray(g), w)
    single = dtc.compile(lambda x: (x,))(x)
    assert isinstance(single, tuple) and len(single) == 1
    with pytest.raises(dtc.TraceError, match="returns 7 value"):
        dtc.compile(fn, out_layouts=(None, None))(x)


def test_a_training_step_returns_its_loss_and_gradients_as_they_are() -> None:
    def loss(w1, w2, x):
        return np.sum(np.tanh(x @ w1) @ w2)

    step = dtc.compile(dtc.value_and_grad(loss, argnums=(0, 1)))
    w1, w2, x = rand(3, 4), rand(4, 2, seed=1), rand(5, 3, seed=2)
    value, (g1, g2) = step(w1, w2, x)
    h = np.tanh(x @ w1)
    np.testing.assert_allclose(np.asarray(value), np.sum(h @ w2), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(g2), h.T @ np.ones((5, 2)), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(g1), x.T @ ((1 - h**2) * (np.ones((5, 2)) @ w2.T)),
                               rtol=1e-5)


def test_a_returned_dict_needs_sortable_keys() -> None:
    with pytest.raises(dtc.TraceError, match=r"returned a dict whose keys do not sort at \[1\]"):
        dtc.compile(lambda x: (x, {1: x, "a": x}))(rand(2))
    with pytest.raises(TypeError, match="out_layouts holds a dict whose keys do not sort"):
        dtc.compile(lambda x: x, out_layouts={1: None, "a": None})


def test_nested_out_layouts_must_nest_as_the_results_do() -> None:
    """By key, not by position: {"b": X, "c": R} for a returned {"a", "b"} is refused, as is
    a nesting that is neither the results' nor flat."""
    mesh = dtc.create_mesh([("x", 4)])
    x_, rep = dtc.Layout(["x"], mesh), dtc.Layout([U], mesh)
    with pytest.raises(dtc.LayoutError, match=r"out_layouts nest as \{'b': _, 'c': _\}, but "
                                              r"lambda returns \{'a': _, 'b': _\}"):
        dtc.compile(lambda x: {"a": x, "b": x * 2}, out_layouts={"b": x_, "c": rep})(rand(8))
    with pytest.raises(dtc.LayoutError, match=r"nest as \(\(_, _\), _\), but lambda "
                                              r"returns \(_, \(_, _\)\)"):
        dtc.compile(lambda x: (x, (x, x)), out_layouts=((x_, rep), rep))(rand(8))
    got = dtc.compile(lambda x: {"a": x, "b": x * 2}, out_layouts=(rep, x_))(rand(8))
    assert (got["a"].layout, got["b"].layout) == (rep, x_)  # flat: in key order


def test_a_value_that_is_not_an_array_is_named_where_it_is_returned() -> None:
    """A None inside the structure holds no array and comes back as None (as in JAX);
    anything else that is not an array is named where it is."""
    with pytest.raises(dtc.TraceError, match=r"returned a str at \['a'\]\[1\]\[1\]; a "
                                             "compiled function must return arrays"):
        dtc.compile(lambda x: {"a": [x, (x, "text")]})(rand(2))
    got = dtc.compile(lambda x: {"a": [x, (x * 2, None)]})(rand(2))
    assert got["a"][1][1] is None
    np.testing.assert_array_equal(np.asarray(got["a"][1][0]), rand(2) * 2)


# -- nested arguments ---------------------------------------------------------------------------


def test_arguments_may_be_dicts_lists_and_tuples_of_arrays(mesh):
    """The function gets each argument in the structure it was given; in_layouts may nest
    like it, or give one Layout for all its arrays; IR arguments are named by their paths."""
    x, w1, w2 = mlp_inputs()

    def f(params, x):
        return mlp(x, params["w"][0], params["w"][1]) + params["b"]

    b = rand(8, seed=4)
    compiled = dtc.compile(f, in_layouts=(
        {"w": [dtc.Layout([U, "tp"], mesh), dtc.Layout(["tp", U], mesh)], "b": None},
        dtc.Layout(["dp", U], mesh)), out_layouts=dtc.Layout(["dp", U], mesh))
    params = {"w": [w1, w2], "b": b}
    np.testing.assert_allclose(np.asarray(compiled(params, x)), mlp(x, w1, w2) + b,
                               rtol=1e-5, atol=1e-6)
    low = compiled.lower(params, x)
    assert low.ir("trace").splitlines()[1].startswith(
        "func @f(%params_b: f32[8], %params_w_0: f32[8,32] @ {-, tp}, "
        "%params_w_1: f32[32,8] @ {tp, -}, %x: f32[16,8] @ {dp, -})")
    assert [c.kind for c in low.collectives()] == ["all_reduce"]
    np.testing.assert_array_equal(np.asarray(low.run(params, x)),
                                  np.asarray(compiled(params, x)))
    one = dtc.compile(lambda p: p[0] * p[1], in_layouts=dtc.Layout(["dp", U], mesh))
    low = one.lower((x, x))
    assert [layout.sharding_specs for layout in low.in_layouts] == [["dp", U]] * 2
    np.testing.assert_allclose(np.asarray(low.run((x, x))), x * x)


def test_the_structure_of_the_arguments_is_part_of_the_program(mesh):
    f = dtc.compile(lambda p: p["a"] - p["b"])
    a, b = rand(4, seed=1), rand(4, seed=2)
    np.testing.assert_allclose(np.asarray(f({"a": a, "b": b})), a - b)
    np.testing.assert_allclose(np.asarray(f({"a": b, "b": a})), b - a)
    g = dtc.compile(lambda p, s: p[0] * p[1] * s)
    # a number in a container is a constant of the program, as a number argument is
    np.testing.assert_allclose(np.asarray(g([a, 2.0], 3.0)), a * 6)
    np.testing.assert_allclose(np.asarray(g([a, 5.0], 3.0)), a * 15)
    low = g.lower([a, 2.0], 3.0)
    np.testing.assert_allclose(np.asarray(low.run([b, 9.0])), b * 6)  # numbers are ignored
    with pytest.raises(dtc.TraceError, match=r"argument 0 is \(_,\), the program takes \[_, _\]"):
        low.run((b,))
    with pytest.raises(dtc.TraceError, match="the program takes 1 arguments, got 2"):
        low.run([b, 2.0], 3.0)


def test_a_repeated_call_with_nested_arguments_skips_resolving_them(mesh, monkeypatch):
    """Calls whose arguments nest arrays, DTensors and numbers are keyed by their nesting
    and leaf types, as flat ones are: the second call goes straight to the program, and any
    difference of structure (a named tuple, a list, other keys, another number) is another
    program."""
    from collections import namedtuple

    pair = namedtuple("pair", "first second")
    layout = dtc.Layout(["dp", U], mesh)
    a, b = rand(4, 4, seed=1), rand(4, 4, seed=2)
    f = dtc.compile(lambda p: p, in_layouts=(layout,))
    resolved = []
    real = dtc.CompiledFunction._resolve
    monkeypatch.setattr(dtc.CompiledFunction, "_resolve",
                        lambda self, args: resolved.append(args) or real(self, args))
    for given, kind in [((a, b), tuple), (pair(a, b), pair), ([a, b], list)]:
        got = f(given)
        assert type(got) is kind
        np.testing.assert_array_equal(np.asarray(got[1]), b)
        again = f(type(given)(*given) if kind is pair else kind([b, a]))
        assert type(again) is kind
        np.testing.assert_array_equal(np.asarray(again[0]), given[0] if kind is pair else b)
    assert len(resolved) == 3
    g = dtc.compile(lambda p: p["w"] * p["s"], in_layouts=(layout,))
    t = dtc.copy_to_mesh(a, layout)
    np.testing.assert_allclose(np.asarray(g({"w": t, "s": 2.0})), a * 2)
    np.testing.assert_allclose(np.asarray(g({"w": t, "s": 3.0})), a * 3)
    np.testing.assert_allclose(np.asarray(g({"w": b, "s": 3.0})), b * 3)
    np.testing.assert_allclose(np.asarray(g({"w": t, "s": 3.0})), a * 3)
    assert len(resolved) == 6
    h = dtc.compile(lambda p: p.get("x", p.get("y")))
    np.testing.assert_array_equal(np.asarray(h({"x": a})), a)
    np.testing.assert_array_equal(np.asarray(h({"y": b})), b)
    assert len(resolved) == 8


def test_tracing_and_planning_leave_no_cycles_for_the_collector(mesh):
    """Compiling a training step on nested arguments makes no garbage that only the cyclic
    collector frees: a cycle through a traced array would keep the whole traced program
    (and its tensors' memory) alive until it ran."""
    import gc

    def loss(p, x):
        return np.mean(np.tanh(x @ p["w"][0]) @ p["w"][1])

    def step(p, x):
        value, grads = dtc.value_and_grad(loss)(p, x)
        return value, {"w": [w - 0.1 * g for w, g in zip(p["w"], grads["w"])]}

    params = {"w": [rand(8, 4, seed=1), rand(4, 2, seed=2)]}
    f = dtc.compile(step, in_layouts=({"w": [None, None]}, dtc.Layout(["dp", U], mesh)))
    gc.collect()
    gc.disable()
    try:
        lowered = f.lower(params, rand(16, 8))
        assert gc.collect() == 0
    finally:
        gc.enable()
    assert len(lowered.collectives()) > 0


def test_dict_keys_of_another_type_make_another_program():
    """``1 == 1.0 == True``, but the function sees the keys it is given (and a returned
    dict has them): equal keys of another type are another structure."""
    a = rand(4)

    def fn(p):
        return p[next(iter(p))] * (2.0 if type(next(iter(p))) is int else 3.0)

    f = dtc.compile(fn)
    np.testing.assert_array_equal(np.asarray(f({1: a})), a * 2)
    np.testing.assert_array_equal(np.asarray(f({1.0: a})), a * 3)
    same = dtc.compile(lambda p: p)
    assert [type(k) for k in same({1: a})] == [int]
    assert [type(k) for k in same({True: a})] == [bool]
    assert [type(k) for k in same({1.0: a})] == [float]


def test_an_ordered_dict_and_a_defaultdict_come_back_as_they_were():
    """Flattened in key order like a dict, rebuilt as what they were: an ``OrderedDict`` in
    its insertion order (another order is another program), a ``defaultdict`` with its
    factory; the same for the arguments the function sees and for gradients."""
    from collections import OrderedDict, defaultdict

    a, b = rand(2, seed=1), rand(3, seed=2)
    seen = []

    @dtc.compile
    def twice(p):
        seen.append((type(p), list(p)))
        return OrderedDict((k, v * 2) for k, v in p.items())

    for keys in (["b", "a"], ["a", "b"]):
        got = twice(OrderedDict((k, {"a": a, "b": b}[k]) for k in keys))
        assert type(got) is OrderedDict and list(got) == keys
        np.testing.assert_array_equal(np.asarray(got["b"]), b * 2)
    assert seen == [(OrderedDict, ["b", "a"]), (OrderedDict, ["a", "b"])]
    got = twice({"b": b, "a": a})  # a plain dict is seen in key order
    assert type(got) is OrderedDict and list(got) == ["a", "b"]

    counts = dtc.compile(lambda p: defaultdict(int, {"s": p["x"] + 1}))({"x": a})
    assert type(counts) is defaultdict and counts.default_factory is int
    np.testing.assert_array_equal(np.asarray(counts["s"]), a + 1)

    grads = dtc.grad(lambda p: (p["w"] ** 2).sum() + p["v"].sum())(OrderedDict(w=b, v=a))
    assert type(grads) is OrderedDict and list(grads) == ["w", "v"]
    np.testing.assert_allclose(np.asarray(grads["w"]), 2 * b, rtol=1e-6)


def test_a_repeated_call_follows_the_devices_a_mesh_without_layouts_gets(monkeypatch):
    """A call whose arguments name no mesh runs on `create_mesh()`, as many devices as
    `initialize_accelerator_system` gave (else `DTC_NUM_DEVICES`)."""
    monkeypatch.delenv("DTC_NUM_DEVICES", raising=False)
    a = rand(4)
    f = dtc.compile(lambda p: p[0] * 2)
    assert f([a]).mesh.size == 8
    dtc.initialize_accelerator_system(num_logical_cpu_devices=2)
    try:
        assert f([a]).mesh.size == 2
        assert f(a[None]).mesh.size == 2
    finally:
        dtc.shutdown_accelerator_system()
    assert f([a]).mesh.size == 8


def test_a_donated_dtensor_given_again_is_named(mesh):
    layout = dtc.Layout(["dp", U], mesh)
    step = dtc.compile(lambda p: {k: v * 2 for k, v in p.items()}, donate_argnums=0)
    params = {"w": dtc.copy_to_mesh(rand(4, 4), layout)}
    step(params)
    with pytest.raises(dtc.DonatedError, match=r"argument \"p\['w'\]\" was donated to "
                                               r"@lambda, which may have written"):
        step(params)
    with pytest.raises(dtc.DonatedError, match="argument 'x' was donated to @lambda"):
        dtc.compile(lambda x: x * 2)(params["w"])


def test_nested_arguments_and_layouts_that_do_not_fit_are_named(mesh):
    a = rand(4, 4)
    f = dtc.compile(lambda p: p["a"], in_layouts=({"a": dtc.Layout(["dp", U], mesh),
                                                   "b": None},))
    with pytest.raises(dtc.LayoutError, match=r"in_layouts for argument 'p' is \{'a': _, "
                                              r"'b': _\}, but the argument is \{'a': _\}"):
        f({"a": a})
    with pytest.raises(dtc.LayoutError, match="is nested, but the argument is not a dict"):
        f(a)
    g = dtc.compile(lambda p: p[1], in_layouts=(dtc.Layout(["dp", U], mesh),))
    with pytest.raises(dtc.LayoutError, match=r"argument 'p\[0\]' of shape \[4\] does not fit"):
        g([a[0], a])
    with pytest.raises(dtc.TraceError, match=r"argument 'p' holds a dict whose keys do not "
                                             "sort"):
        dtc.compile(lambda p: p["a"])({"a": a, 1: a})
    with pytest.raises(TypeError, match=r"in_layouts\[0\] must hold Layouts or None"):
        dtc.compile(lambda p: p, in_layouts=({"a": "dp"},))
    with pytest.raises(dtc.TraceError, match=r"argument \"p\['b'\]\" must be a numeric array"):
        dtc.compile(lambda p: p["a"])({"a": a, "b": "text"})


def test_donating_a_nested_argument_donates_its_arrays(mesh):
    layout = dtc.Layout(["dp", U], mesh)
    step = dtc.compile(lambda p, g: {k: p[k] - g[k] for k in p}, in_layouts=(layout, layout),
                       out_layouts={"a": layout, "b": layout}, donate_argnums=0)
    a, b = rand(4, 4, seed=1), rand(4, 4, seed=2)
    params = {"a": dtc.copy_to_mesh(a, layout), "b": dtc.copy_to_mesh(b, layout)}
    new = step(params, {"a": a, "b": a})
    np.testing.assert_array_equal(np.asarray(new["b"]), b - a)
    for t in params.values():
        with pytest.raises(dtc.DonatedError):
            t.numpy()


def test_numbers_in_a_nested_argument_take_no_layout_and_are_not_donated(mesh):
    layout = dtc.Layout(["dp"], mesh)
    a = rand(4)
    f = dtc.compile(lambda p: p["w"] * p["lr"], in_layouts=(layout,))
    np.testing.assert_allclose(np.asarray(f({"w": a, "lr": 0.5})), a * 0.5)
    g = dtc.compile(lambda p: p["w"] * p["lr"], donate_argnums=0)
    np.testing.assert_allclose(np.asarray(g({"w": dtc.copy_to_mesh(a, layout), "lr": 0.5})),
                               a * 0.5)
    with pytest.raises(dtc.TraceError, match="'s' is a Python number, which cannot be donated"):
        dtc.compile(lambda s, x: x * s, donate_argnums=0)(2.0, a)


def test_a_lowered_program_counts_the_arguments_it_takes_without_its_numbers():
    a = rand(4)
    low = dtc.compile(lambda x, s, p: x * s + p[0]).lower(a, 2.0, [a])
    with pytest.raises(dtc.TraceError, match="the program takes 2 arguments, got 0"):
        low.run()
    with pytest.raises(dtc.TraceError, match=r"argument 1 is _, the program takes \[_\]"):
        low.run(a, a)
    np.testing.assert_allclose(np.asarray(low.run(a, [a])), a * 3)


def test_constants_are_told_apart_by_their_bits():
    """0.0 and -0.0 are equal numbers but different constants (``x / s``)."""
    a = rand(4) + 5
    f = dtc.compile(lambda x, s: x / s)
    with np.errstate(divide="ignore"):
        assert np.all(np.asarray(f(a, 0.0)) == np.inf)
        assert np.all(np.asarray(f(a, -0.0)) == -np.inf)
        g = dtc.compile(lambda p: p["x"] / p["s"])
        assert np.all(np.asarray(g({"x": a, "s": 0.0})) == np.inf)
        assert np.all(np.asarray(g({"x": a, "s": -0.0})) == -np.inf)


def test_in_layouts_as_a_dict_and_keys_beyond_ascii(mesh):
    with pytest.raises(TypeError, match=r"in_layouts is a dict; give one entry per argument"):
        dtc.compile(lambda p: p["w"], in_layouts={"w": dtc.Layout(["dp"], mesh)})
    low = dtc.compile(lambda params: params["wé"] * 2).lower({"wé": rand(4)})
    assert low.ir("trace").splitlines()[1].startswith("func @lambda(%params_w: f32[4])")


def test_a_lowered_program_names_a_nested_argument_by_its_path():
    low = dtc.compile(lambda p, x_: p["w"] + x_).lower({"w": rand(4)}, rand(4))
    assert low.ir("trace").splitlines()[1].startswith("func @lambda(%p_w: f32[4], %x_: f32[4])")
    with pytest.raises(dtc.TraceError, match=r"argument \"p\['w'\]\" is float32\[3\]"):
        low.run({"w": rand(3)}, rand(4))
