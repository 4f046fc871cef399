"""The triton backend's ops outside its templates (gathers, scatter-adds, sorts, scans,
reductions over other axes, integer contractions, concatenation, flips, the padding mask):
torch computes them on the kernels' device, the values equal numpy's, and `kernel_runs`,
`kernel_sources` and `explain` say what ran each."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

import dtensor_compiler as dtc

pytest.importorskip("triton")
import torch  # noqa: E402
from torch.overrides import TorchFunctionMode  # noqa: E402

from dtensor_compiler.runtime.triton_device import DEVICE  # noqa: E402

U = dtc.UNSHARDED


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DTC_CACHE_DIR", str(tmp_path / "cache"))


class _Calls(TorchFunctionMode):
    """Counts the torch functions called on tensors, by name."""

    def __init__(self) -> None:
        super().__init__()
        self.names: Counter[str] = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.names[getattr(func, "__name__", str(func))] += 1
        return func(*args, **(kwargs or {}))


MESH = dtc.create_mesh([("x", 2), ("y", 2)])
_RNG = np.random.default_rng(7)
_T = _RNG.standard_normal((8, 5))
_T7 = _RNG.standard_normal((7, 5))
_TIES = _RNG.integers(-3, 3, (8, 5))
_NANS = np.where(_RNG.random((8, 5)) < 0.2, np.nan, _T)
_I = np.array([[0, 7, -1], [3, 3, 5]])
_A, _B = _RNG.integers(-9, 9, (6, 4)), _RNG.integers(-9, 9, (4, 3))


def _layouts(*specs: list) -> tuple[dtc.Layout, ...]:
    return tuple(dtc.Layout(s, MESH) for s in specs)


def _squares_of_picked(t, i):
    return np.sum(np.take(t, i, axis=0) ** 2)


CASES = {
    # name: (function, layouts, arguments, ops torch runs, torch functions it calls)
    "take_of_a_sharded_table": (
        lambda t, i: np.take(t, i, axis=0), _layouts(["x", U], [U, U]), (_T, _I),
        {"take"}, {"where"}),
    "take_of_integers": (
        lambda t, i: np.take(t, i, axis=1), _layouts([U, "y"], [U, U]), (_TIES, _I % 5),
        {"take"}, {"movedim"}),
    "scatter_add_of_take_gradient": (
        lambda t, i: dtc.grad(_squares_of_picked)(t, i), _layouts([U, "y"], [U, U]), (_T, _I),
        {"take", "scatter_add"}, {"index_add_"}),
    "sort_and_stable_argsort_with_ties": (
        lambda t: np.sort(t, axis=0) * 10 + np.argsort(t, axis=1, kind="stable"),
        _layouts([U, "y"]), (_TIES,), {"sort", "argsort"}, {"sort"}),
    "sort_with_nans": (
        lambda t: np.sort(t, axis=1), _layouts(["x", U]), (_NANS,), {"sort"}, {"sort"}),
    "cumsum_and_cumprod": (
        lambda t: np.cumsum(t, axis=0) + np.cumprod(t, axis=1), _layouts([U, "y"]),
        (_TIES,), {"cumsum", "cumprod"}, {"cumsum", "cumprod"}),
    "reductions_over_the_first_axis": (
        lambda t: np.sum(t, axis=0) + np.max(t, axis=0) * np.prod(t, axis=0) - np.min(t, 0),
        _layouts([U, "y"]), (_NANS,), {"reduce_sum", "reduce_max", "reduce_prod",
                                       "reduce_min"}, {"sum", "amax", "prod", "amin"}),
    "argmax_with_ties": (
        lambda t: np.argmax(t, axis=0), _layouts([U, "y"]), (_TIES,), {"reduce_max"},
        {"amax"}),
    "integer_matmul": (
        lambda a, b: a @ b, _layouts(["x", U], [U, U]), (_A, _B), {"matmul"}, {"einsum"}),
    "integer_einsum": (
        lambda a, b: np.einsum("ij,jk->ki", a, b), _layouts(["x", U], [U, "y"]), (_A, _B),
        {"einsum"}, {"einsum"}),
    "concatenate_and_flip": (
        lambda t: np.concatenate([t, np.flip(t, 0)], axis=1), _layouts(["x", U]), (_T,),
        {"concatenate", "reverse"}, {"cat", "flip"}),
    "sum_of_uneven_blocks": (
        lambda t: np.sum(t, axis=0), _layouts(["x", U]), (_T7,), {"mask", "reduce_sum"},
        {"clone", "sum"}),
}


@pytest.mark.parametrize("case", CASES)
def test_ops_outside_the_templates_run_on_torch_and_equal_numpy(case):
    fn, layouts, args, ops, functions = CASES[case]
    f = dtc.compile(fn, in_layouts=layouts, backend="triton")
    f.lower(*args).prepare()  # (the kernels are built outside the counted run)
    with _Calls() as calls:
        got = np.asarray(f(*args))
    want = fn(*args)
    assert got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    runs = f.lower(*args).kernel_runs()
    if case.startswith("integer_") and DEVICE != "cpu":  # no integer GEMM in CUDA's torch
        assert {r.ops[0] for r in runs if r.runs_on == "numpy"} == ops
        return
    on_torch = {r.ops[0] for r in runs if r.runs_on == "torch"}
    assert ops <= on_torch
    assert not [r for r in runs if r.runs_on == "numpy"]
    assert functions <= set(calls.names), calls.names


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16])
def test_low_precision_sorts_and_scans_run_on_torch(dtype):
    x = _T.astype(dtype)
    f = dtc.compile(lambda t: np.sort(t, axis=0) + np.cumsum(t, axis=1, dtype=t.dtype),
                    in_layouts=_layouts([U, "y"]), backend="triton")
    got = np.asarray(f(x))
    assert got.dtype == x.dtype
    wide = x.astype(np.float32)
    want = np.sort(wide, axis=0) + np.cumsum(wide, axis=1)
    np.testing.assert_allclose(got.astype(np.float32), want, rtol=5e-2, atol=5e-2)
    assert {r.runs_on for r in f.lower(x).kernel_runs() if r.ops[0] in ("sort", "cumsum")} \
        == {"torch"}


def test_an_op_torch_does_not_compute_runs_on_numpy_and_says_so():
    """torch orders no complex numbers; numpy sorts them by real part, then imaginary."""
    z = _T + 1j * _TIES
    f = dtc.compile(lambda z: np.sort(z, axis=0), in_layouts=_layouts([U, "y"]),
                    backend="triton")
    np.testing.assert_array_equal(np.asarray(f(z)), np.sort(z, axis=0))
    lowered = f.lower(z)
    (run,) = lowered.kernel_runs()
    assert (run.name, run.runs_on, run.ops) == ("%0", "numpy", ("sort",))
    assert lowered.kernel_sources() == {"%0": "# %0 = sort runs as a numpy kernel on the "
                                              "host\n"}
    assert "%0      numpy    sort  on the host" in lowered.explain()


def test_explain_lists_every_compute_step_and_what_runs_it():
    f = dtc.compile(lambda t, i: np.exp(np.take(t, i, axis=0)).sum(axis=0),
                    in_layouts=_layouts([U, "y"], [U, U]), backend="triton")
    text = f.lower(_T, _I).explain().replace(f"on {DEVICE}", "on cpu")
    assert text.endswith(
        "compute steps on the triton backend:\n"
        "#  kernel         runs on  ops         how\n"
        "1  %0             torch    take        on cpu\n"
        "2  lambda_k0_exp  triton   exp         elementwise\n"
        "3  %2             torch    reduce_sum  on cpu\n"
        "total: 2 torch, 1 triton\n")


def test_a_take_index_out_of_bounds_is_an_index_error_naming_the_users_axis():
    f = dtc.compile(lambda t, i: np.take(t, i, axis=0), in_layouts=_layouts([U, "y"], [U]),
                    backend="triton")
    with pytest.raises(IndexError, match="index 8 is out of bounds for axis 0 with size 8"):
        f(_T, np.array([1, 8]))


@pytest.mark.skipif(DEVICE != "cpu", reason="on a GPU, operands are copied there")
def test_torch_kernels_share_the_arrays_memory_on_the_cpu():
    """No copies on the way in: the tensor a torch kernel reads is the array's memory."""
    from dtensor_compiler.runtime.triton_device import to_device
    a = np.arange(12.0).reshape(3, 4)[:, 1:]
    t = to_device(a)
    assert t.data_ptr() == a.ctypes.data and t.stride() == (4, 1)
    assert torch.equal(t, torch.tensor(a))


_EDGES = np.array([0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 1.5, 2.5, -2.5, 1e-310, 3.0, -7.25, 1e300,
                   -1e300, np.inf, -np.inf, np.nan, 0.1, 0.9, 100.0, 1e-8, -1e-8])
_INT_EDGES = np.array([0, 1, -1, 2, -3, 7, -8, 100, 63, 64, -64, 2**31 - 1, -2**31])
_DTYPES = [np.float64, np.float32, np.float16, ml_dtypes.bfloat16, np.int64, np.int32,
           np.int8, np.uint8, np.bool_]


def _edges(dtype) -> np.ndarray:
    if np.dtype(dtype) == np.bool_:
        return np.array([True, False])
    values = _EDGES if np.dtype(dtype).kind == "f" or dtype is ml_dtypes.bfloat16 else \
        _INT_EDGES
    with np.errstate(all="ignore"):
        return values.astype(dtype)


def _torch_kernel_of(name: str, operands: list[np.ndarray], result: np.dtype):
    """The torch kernel of the ufunc `name` on global operands of these arrays' types, and
    what `runner` says runs it."""
    from dtensor_compiler.ir.mesh_shape import MeshShape
    from dtensor_compiler.ir.parser import parse_module
    from dtensor_compiler.ir.types import dtype_name
    from dtensor_compiler.runtime.stacked_context import StackedContext
    from dtensor_compiler.runtime.torch_kernels import TORCH_KERNELS, runner

    def ir_type(a):
        return f"{dtype_name(a.dtype)}[{','.join(map(str, a.shape))}]"
    args = ", ".join(f"%a{i}: {ir_type(a)}" for i, a in enumerate(operands))
    out = f"{dtype_name(result)}[{','.join(map(str, operands[0].shape))}]"
    module = parse_module(f"mesh<x=1>\nfunc @f({args}) -> ({out}) {{\n  %0 = {name} "
                          f"{', '.join(f'%a{i}' for i in range(len(operands)))} : {out}\n"
                          "  return %0\n}")
    (op,) = module.main.ops
    build = TORCH_KERNELS.get(name)
    assert build is not None
    return build(op, StackedContext(MeshShape(()))), runner(op)


def _same(got: np.ndarray, want: np.ndarray) -> bool:
    """Equal, NaN where numpy has NaN, within 4 ulps for floats; signed zeros may differ."""
    if got.dtype != want.dtype or got.shape != want.shape:
        return False
    if want.dtype.kind not in "fV":
        return bool((got == want).all())
    g, w = got.astype(np.float64), want.astype(np.float64)
    with np.errstate(all="ignore"):  # (spacing of inf, inf - inf: NaN, compared false)
        ulp = np.spacing(np.abs(want).astype(np.float32 if want.dtype.kind == "V" else want.dtype))
        ulp = ulp.astype(np.float64) * (2 ** 16 if want.dtype.kind == "V" else 1)
        near = np.abs(g - w) <= 4 * ulp
    return bool(((g == w) | (np.isnan(g) & np.isnan(w)) | near).all())


@pytest.mark.parametrize("dtype", _DTYPES, ids=lambda d: np.dtype(d).name)
def test_elementwise_torch_kernels_equal_numpy_on_edge_values(dtype):
    """Every ufunc `runner` puts on torch, on NaN, infinities, signed zeros, subnormals and
    extreme integers, against numpy; the ufuncs it keeps on numpy for this dtype are the
    ones listed (where torch's answers differ)."""
    from dtensor_compiler.ir.ops.elementwise import UFUNCS

    values = _edges(dtype)
    on_numpy = []
    for name, definition in UFUNCS.items():
        operands = [values] if definition.operands == 1 else [
            np.ascontiguousarray(np.broadcast_to(values[:, None], (values.size,) * 2)),
            np.ascontiguousarray(np.broadcast_to(values[None, :], (values.size,) * 2))]
        try:
            with np.errstate(all="ignore"):
                want = getattr(np, name)(*operands)
        except TypeError:
            continue  # numpy has no loop for this dtype
        except ValueError:  # integers to negative powers: numpy refuses them
            want = getattr(np, name)(*(np.ones_like(a) for a in operands))
            assert _torch_kernel_of(name, operands, want.dtype)[1] == "numpy"
        kernel, runs_on = _torch_kernel_of(name, operands, want.dtype)
        if runs_on != "torch":
            on_numpy.append(name)
            continue
        got = kernel(*operands)
        assert _same(got, want), (name, operands, got, want)
    kind = "f" if np.dtype(dtype).kind in "fV" else np.dtype(dtype).kind
    assert on_numpy == _ON_NUMPY[kind]


_ON_INTEGERS = ["cbrt", "reciprocal", "floor", "ceil", "trunc", "conjugate", "spacing",
                "floor_divide", "remainder", "fmod", "power", "logaddexp2", "heaviside",
                "ldexp", "gcd", "lcm"]
_ON_NUMPY = {
    "f": ["cbrt", "sign", "conjugate", "spacing", "remainder", "fmod", "logaddexp2",
          "heaviside"],
    "i": _ON_INTEGERS,
    "u": _ON_INTEGERS,
    "b": ["cbrt", "reciprocal", "absolute", "floor", "ceil", "trunc", "conjugate", "spacing",
          "add", "multiply", "floor_divide", "remainder", "fmod", "power", "maximum",
          "minimum", "fmax", "fmin", "logaddexp2", "heaviside", "ldexp"],
}
"""The ufuncs numpy computes for the triton backend (torch does not as numpy does), per
dtype kind (numpy's own loops, where it has one)."""


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16])
def test_narrow_indices_reach_every_row(dtype):
    table = np.arange(300.0)[:, None]
    indices = np.array([1, 255 if dtype == np.uint8 else -3], dtype)
    f = dtc.compile(lambda t, i: np.take(t, i, axis=0), in_layouts=_layouts([U, U], [U]),
                    backend="triton")
    np.testing.assert_array_equal(np.asarray(f(table, indices)), np.take(table, indices, 0))


def test_take_along_a_later_axis_on_a_mesh_without_dims():
    mesh = dtc.create_mesh([])
    f = dtc.compile(lambda t, i: np.take(t, i, axis=1), backend="triton",
                    in_layouts=(dtc.Layout([U, U, U], mesh), dtc.Layout([U, U], mesh)))
    t, i = np.arange(24.0).reshape(2, 3, 4), np.array([[2, 0], [1, 1]])
    np.testing.assert_array_equal(np.asarray(f(t, i)), np.take(t, i, axis=1))


def test_the_gradient_of_a_take_from_an_empty_table():
    def grad(t, i):
        return dtc.grad(lambda t, i: np.sum(np.take(t, i, axis=0) ** 2))(t, i)
    f = dtc.compile(grad, in_layouts=_layouts([U, U], [U]), backend="triton")
    got = np.asarray(f(np.zeros((7, 0)), np.array([1, 2])))
    assert got.shape == (7, 0)


@pytest.mark.parametrize("shape, axis", [((0, 3), 0), ((3, 0), 1)])
@pytest.mark.parametrize("reduce", [np.max, np.min, np.argmax])
def test_an_extremum_over_no_elements_raises_numpys_error(shape, axis, reduce):
    """numpy's ValueError, from its kernel: torch's (an IndexError) and the row kernel's
    (which would give the identity) are not asked."""
    f = dtc.compile(lambda t: reduce(t, axis=axis), in_layouts=_layouts([U, U]),
                    backend="triton")
    with pytest.raises(ValueError, match="empty sequence|zero-size array"):
        f(np.zeros(shape))


def test_half_precision_sums_and_products_accumulate_in_fp32():
    """As the Triton templates do (numpy's fp16 sum of 4096 ones stops at 2048)."""
    ones = np.ones((4096, 2), np.float16)
    f = dtc.compile(lambda t: np.sum(t, axis=0), in_layouts=_layouts([U, U]), backend="triton")
    np.testing.assert_array_equal(np.asarray(f(ones)), [4096, 4096])
    f = dtc.compile(lambda t: np.cumprod(t, axis=1), in_layouts=_layouts([U, U]),
                    backend="triton")
    np.testing.assert_array_equal(np.asarray(f(np.array([[300, 300, 0]], np.float16))),
                                  [[300, np.inf, 0]])


def test_every_op_that_computes_has_a_torch_kernel():
    """Of the pure ops, only these have none (nothing of theirs runs per call on the
    device): relayouts and hints, which planning turns into collectives or removes; the
    call of a kernel body; sources, built once when the program is prepared."""
    from dtensor_compiler.ir import opdef
    from dtensor_compiler.runtime import torch_kernels

    without = sorted(d.name for d in opdef.registered()
                     if d.pure and d.collective is None and d.name not in torch_kernels._VIEWS
                     and d.name not in torch_kernels._REFUSED
                     and not d.name.startswith("test_"))  # (the tests' own ops)
    assert without == ["constant", "cotangent", "full", "iota", "kernel", "relayout",
                       "relayout_like"]


def test_real_and_imaginary_parts_run_on_torch():
    """Complex values are outside the templates: the body runs op by op, on torch."""
    z = _T + 1j * _TIES
    f = dtc.compile(lambda z: np.real(z) * 2 + np.imag(z), in_layouts=_layouts([U, "y"]),
                    backend="triton")
    np.testing.assert_array_equal(np.asarray(f(z)), np.real(z) * 2 + np.imag(z))
    (run,) = f.lower(z).kernel_runs()
    assert run.runs_on == "op by op"
    assert run.detail.endswith("real on torch, multiply on torch, imag on torch, add on torch")
