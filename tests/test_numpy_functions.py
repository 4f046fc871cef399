"""numpy functions composed or defined for issue #7 point 14, run on sharded layouts of
several meshes and compared with numpy (dtype exactly, values exactly where no float sum is
reordered), plus their sharding behaviour and their errors."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

import dtensor_compiler as dtc
import dtensor_compiler.errors as errors

U = dtc.UNSHARDED
RNG = np.random.default_rng(7)
MESHES = {"2x4": [("a", 2), ("b", 4)], "8": [("a", 8)], "2x2x2": [("a", 2), ("b", 2), ("c", 2)]}
X = RNG.standard_normal((8, 16)).astype(np.float32)
C = (RNG.standard_normal((8, 16)) + 1j * RNG.standard_normal((8, 16))).astype(np.complex64)
N = RNG.integers(-60, 60, (8, 16)).astype(np.int32)
TIES = RNG.integers(0, 3, (8, 16)).astype(np.float64)

CASES: dict[str, tuple[Callable, np.ndarray]] = {
    "any": (lambda x: np.any(x > 1, axis=1), X),
    "all_keepdims": (lambda x: np.all(x > -2, axis=0, keepdims=True), X),
    "any_none": (lambda x: (x > 2).any(), X),
    "all_negative_axis": (lambda x: np.all(x, axis=-1), N),
    "any_empty_axis": (lambda x: np.any(x[:, :0], axis=1), X),
    "all_empty_axis": (lambda x: np.all(x[:0], axis=0), X),
    "round": (lambda x: np.round(x * 10, 2), X),
    "around_negative": (lambda x: np.around(x * 100, -1), X),
    "round_int_negative": (lambda x: np.round(x * 7, -1), N),
    "round_int": (lambda x: np.round(x, 2), N),
    "round_method": (lambda x: x.round(1), X),
    "flip": (lambda x: np.flip(x, 1), X),
    "flip_all": (lambda x: np.flip(x), N),
    "reverse_slice": (lambda x: x[::-1], X),
    "negative_step": (lambda x: x[5:1:-2, ::-3], X),
    "negative_step_empty": (lambda x: x[1:5:-1], X),
    "roll": (lambda x: np.roll(x, 3, axis=1), X),
    "roll_negative_axes": (lambda x: np.roll(x, (-2, 5), axis=(0, -1)), N),
    "roll_flat": (lambda x: np.roll(x, 5), X),
    "pad": (lambda x: np.pad(x, 1), X),
    "pad_values": (lambda x: np.pad(x, ((1, 2), (0, 3)), constant_values=((1.5, 2), (3, -4))), N),
    "triu": (lambda x: np.triu(x), X),
    "tril_k": (lambda x: np.tril(x, -2), N),
    "triu_vector": (lambda x: np.triu(x[0], 1), X),
    "sort": (lambda x: np.sort(x, axis=0), X),
    "sort_flat": (lambda x: np.sort(x, axis=None), N),
    "argsort": (lambda x: np.argsort(x, axis=-1), TIES),
    "argsort_stable": (lambda x: np.argsort(x, axis=0, stable=True), TIES),
    "argsort_method": (lambda x: x.argsort(kind="mergesort"), TIES),
    "norm": (lambda x: np.linalg.norm(x), X),
    "norm_axis": (lambda x: np.linalg.norm(x, axis=0, keepdims=True), X),
    "norm_fro_int": (lambda x: np.linalg.norm(x, "fro"), N),
    "norm_inf": (lambda x: np.linalg.norm(x, np.inf, axis=1), X),
    "norm_1": (lambda x: np.linalg.norm(x, 1, axis=0), X),
    "norm_3": (lambda x: np.linalg.norm(x, 3, axis=1), X),
    "norm_0": (lambda x: np.linalg.norm(x, 0, axis=1), X),
    "norm_matrix_1": (lambda x: np.linalg.norm(x, 1, axis=(0, 1)), X),
    "norm_matrix_inf": (lambda x: np.linalg.norm(x, -np.inf, axis=(1, 0), keepdims=True), X),
    "norm_complex": (lambda x: np.linalg.norm(x), C),
    "norm_complex_axis": (lambda x: np.linalg.norm(x, axis=1), C),
    "cumprod": (lambda x: np.cumprod(x * 0.5 + 1, axis=1), X),
    "cumprod_int8": (lambda x: np.cumprod(x.astype(np.int8), axis=0), N),
    "multiply_accumulate": (lambda x: np.multiply.accumulate(x, axis=1), N),
    "cumprod_method": (lambda x: x.cumprod(), N),
    "real_imag": (lambda x: (np.real(x), x.imag), C),
    "real_of_real": (lambda x: (np.real(x), np.imag(x)), X),
    "mT": (lambda x: x.mT @ x, X),
    "logaddexp": (lambda x: np.logaddexp(x, -x), X),
    "log1p_expm1": (lambda x: np.log1p(np.abs(x)) + np.expm1(x), X),
    "square_reciprocal": (lambda x: np.square(x) + np.reciprocal(x + 10), X),
    "square_int": (lambda x: np.square(x), N),
    "einsum3": (lambda x: np.einsum("ij,jk,kl->il", x, x.T, x), X),
    "einsum4": (lambda x: np.einsum("ij,kj,ik,il->l", x, x, x @ x.T, x), X),
    "einsum_mixed": (lambda x: np.einsum("ij,jk,k->i", x.astype(np.int8), x.T, x[:, 0]), N),
    "astype_nocopy": (lambda x: x.astype(np.float64, copy=False) * 2, X),
    "np_astype_nocopy": (lambda x: np.astype(x, np.int16, copy=False), N),
}

LAYOUTS = [("a", "b"), ("b", U), (U, "a"), (("a", "b"), U), (U, U)]


def _layout(dims: tuple, mesh: dtc.Mesh) -> dtc.Layout | None:
    names = set(mesh.dim_names)
    flat = [d for dim in dims if dim != U for d in ((dim,) if isinstance(dim, str) else dim)]
    if not set(flat) <= names:
        return None
    return dtc.Layout([d if isinstance(d, str) or d == U else list(d) for d in dims], mesh)


@pytest.mark.parametrize("mesh_name", sorted(MESHES))
@pytest.mark.parametrize("case", sorted(CASES))
def test_functions_match_numpy_on_sharded_layouts(case: str, mesh_name: str) -> None:
    fn, x = CASES[case]
    mesh = dtc.create_mesh(MESHES[mesh_name])
    want = fn(x)
    want = want if isinstance(want, tuple) else (want,)
    layouts = [lay for dims in LAYOUTS if (lay := _layout(dims, mesh)) is not None]
    for layout in layouts:
        got = dtc.compile(fn, in_layouts=layout, verify=True)(x)
        got = got if isinstance(got, tuple) else (got,)
        for g, w in zip(got, want):
            g, w = np.asarray(g), np.asarray(w)
            assert (g.dtype, g.shape) == (w.dtype, w.shape), (case, layout)
            if case.startswith(("norm", "einsum", "mT")) and g.dtype.kind in "fc":
                np.testing.assert_allclose(g, w, rtol=2e-5, atol=1e-4, err_msg=f"{case} {layout}")
            else:
                np.testing.assert_array_equal(g, w, err_msg=f"{case} {layout}")


def _ir(fn: Callable, layout: list, shape: tuple = (8, 16)) -> str:
    mesh = dtc.create_mesh([("dp", 2), ("tp", 4)])
    low = dtc.compile(fn, in_layouts=dtc.Layout(layout, mesh)).lower(dtc.TensorSpec(shape))
    return low.ir("insert-collectives")


@pytest.mark.parametrize("name, kind", [("any", "max"), ("all", "min")])
def test_any_all_leave_a_pending_max_min_over_a_sharded_reduced_axis(name: str, kind: str
                                                                      ) -> None:
    mesh = dtc.create_mesh([("dp", 2), ("tp", 4)])
    fn = getattr(np, name)
    f = dtc.compile(lambda x: fn(x > 0, axis=1), in_layouts=dtc.Layout(["dp", "tp"], mesh),
                    out_layouts=dtc.Layout(["dp"], mesh, partial={"tp": kind}), verify=True)
    text = f.lower(dtc.TensorSpec((8, 16))).ir("insert-collectives")
    assert f"reduce_{kind}" in text and "all_gather" not in text, text
    got = f(X)
    assert got.layout == dtc.Layout(["dp"], mesh, partial={"tp": kind})
    np.testing.assert_array_equal(np.asarray(got), fn(X > 0, axis=1))


def test_norm_is_sqrt_of_one_sum_over_every_dim() -> None:
    """No ravel: the sum can be left pending over however the array is sharded (whether the
    planner reduces it or gathers first is its cost model's call, as for np.sum)."""
    mesh = dtc.create_mesh([("dp", 2), ("tp", 4)])
    low = dtc.compile(lambda x: np.linalg.norm(x), in_layouts=dtc.Layout(["dp", "tp"], mesh)
                      ).lower(dtc.TensorSpec((8, 16)))
    ops = [line.split(" = ")[1].split()[0] for line in low.ir("trace").splitlines()
           if " = " in line]
    assert ops == ["multiply", "reduce_sum", "sqrt"]


@pytest.mark.parametrize("fn, whole", [
    (lambda x: np.flip(x, 0), 0), (lambda x: np.roll(x, 2, axis=1), 1),
    (lambda x: np.pad(x, ((0, 0), (1, 1))), 1), (lambda x: np.sort(x, axis=0), 0),
    (lambda x: np.argsort(x, axis=1), 1), (lambda x: np.cumprod(x, axis=0), 0),
])
def test_only_the_axis_that_needs_it_is_replicated(fn: Callable, whole: int) -> None:
    kept = 1 - whole
    layout = [U, U]
    layout[kept] = "tp"
    text = _ir(fn, layout)
    assert "all_gather" not in text and "all_to_all" not in text, text
    layout[whole] = "dp"
    assert "all_gather" in _ir(fn, layout) or "all_to_all" in _ir(fn, layout)


def test_triu_keeps_the_layout() -> None:
    text = _ir(lambda x: np.triu(x, 1), ["dp", "tp"])
    assert "all_gather" not in text and "iota" in text


def test_einsum_of_three_is_a_chain_of_pairs() -> None:
    mesh = dtc.create_mesh([("dp", 2)])
    low = dtc.compile(lambda a, b, c: np.einsum("ij,jk,kl->il", a, b, c),
                      in_layouts=(dtc.Layout(["dp", U], mesh),) * 3).lower(
        dtc.TensorSpec((64, 2)), dtc.TensorSpec((2, 64)), dtc.TensorSpec((64, 4)))
    text = low.ir("trace")
    assert "ij,jk->ik" not in text and "jk,kl->jl" in text  # the small contraction first
    assert text.count("einsum") == 2


def _raises(exc: type[Exception], fn: Callable) -> str:
    with pytest.raises(exc) as info:
        dtc.compile(fn)(X)
    assert "test_numpy_functions.py:" in str(info.value)
    return str(info.value)


def test_unsupported_arguments_and_attributes_name_themselves() -> None:
    assert "mode='reflect'" in _raises(errors.UnsupportedOperationError,
                                       lambda x: np.pad(x, 1, mode="reflect"))
    assert "ndarray.tofile" in _raises(errors.UnsupportedOperationError,
                                       lambda x: x.tofile("out.bin"))
    assert "ord=2" in _raises(errors.UnsupportedOperationError,
                              lambda x: np.linalg.norm(x, 2, axis=(0, 1)))
    assert "kind='bogo'" in _raises(errors.UnsupportedOperationError,
                                    lambda x: np.sort(x, kind="bogo"))
    assert "ndarray.sort sorts in place" in _raises(errors.TraceError, lambda x: x.sort())
    assert "zero" in _raises(errors.ShapeError, lambda x: x[::0])
    with pytest.raises(AttributeError):
        dtc.compile(lambda x: x.frobnicate)(X)
