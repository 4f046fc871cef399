"""The triton backend: fused elementwise kernels generated as Triton source, cached on disk,
imported and run (in Triton's interpreter on this CPU machine), against numpy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from models import gelu, layernorm_gelu

import dtensor_compiler as dtc
from dtensor_compiler.ir.parser import parse_module

pytest.importorskip("triton")
U = dtc.UNSHARDED


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DTC_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def mesh() -> dtc.Mesh:
    return dtc.create_mesh([("x", 2), ("y", 4)])


def _generated(lowered) -> dict[str, str]:
    """The generated Triton kernels' sources by name (not the ops torch runs)."""
    return {r.name: r.source for r in lowered.kernel_runs() if r.runs_on == "triton"}


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 1e-5),
                                        (np.float16, 2e-2), ("bfloat16", 8e-2)])
def test_fused_kernels_equal_numpy_on_uneven_blocks(mesh, cache, dtype, tol):
    """10 x 7 over x=2, y=4 (column blocks 2, 2, 2, 1, the last padded); every elementwise op
    runs in a generated kernel, and the result equals numpy (fp16 and bf16 computed in fp32;
    the interpreter rounds bf16 stores toward zero, the numpy kernels to nearest, so bf16 is
    within a few of its ulps)."""
    if dtype == "bfloat16":
        dtype = pytest.importorskip("ml_dtypes").bfloat16
    f = dtc.compile(layernorm_gelu, in_layouts=(dtc.Layout(["x", "y"], mesh),
                                                dtc.Layout(["y"], mesh)), backend="triton")
    rng = np.random.default_rng(1)
    x, g = rng.standard_normal((10, 7)).astype(dtype), rng.standard_normal(7).astype(dtype)
    want = layernorm_gelu(x.astype(np.float64), g.astype(np.float64))
    got = np.asarray(f(x, g))
    assert got.dtype == dtype
    np.testing.assert_allclose(got.astype(np.float64), want, rtol=tol, atol=tol)
    sources = _generated(f.lower(x, g))
    ir = f.lower(x, g).ir()
    assert sources and all(f"body = {name}}}" in ir for name in sources)
    assert all(f"def {name}(" in text for name, text in sources.items())
    files = sorted(p.name for p in (cache / "kernels").iterdir())
    assert len(files) == len(sources)
    assert all(any(p.startswith(name + "_") for p in files) for name in sources)


def test_broadcasting_over_mesh_axes_ranks_and_strided_views(mesh):
    """A replicated row, a scalar argument and a transposed (strided) operand, in one
    kernel: the stacked arrays broadcast over the mesh axes they are the same along."""
    def f(a, row, s, b):
        return np.maximum(a * row - s, b.T) / 3.0

    layouts = (dtc.Layout(["x", "y"], mesh), dtc.Layout([U], mesh), dtc.Layout([], mesh),
               dtc.Layout([U, "x"], mesh))
    c = dtc.compile(f, in_layouts=layouts, backend="triton")
    rng = np.random.default_rng(2)
    a, row, b = rng.standard_normal((6, 8)), rng.standard_normal(8), rng.standard_normal((8, 6))
    s = np.float64(0.25)
    np.testing.assert_allclose(np.asarray(c(a, row, s, b)), f(a, row, s, b), rtol=1e-14)
    assert len(_generated(c.lower(a, row, s, b))) == 1


def test_an_op_the_templates_do_not_cover_runs_its_body_op_by_op(mesh):
    f = dtc.compile(lambda a, b: np.arctan2(a, b) + 1.0, in_layouts=(
        dtc.Layout(["x", U], mesh), dtc.Layout(["x", U], mesh)), backend="triton")
    a, b = np.linspace(-1, 1, 12).reshape(4, 3), np.full((4, 3), 0.5)
    np.testing.assert_allclose(np.asarray(f(a, b)), np.arctan2(a, b) + 1.0)
    (text,) = f.lower(a, b).kernel_sources().values()
    assert text == ("# @lambda_k0_arctan2_add runs op by op: op arctan2 is not covered: "
                    "arctan2 on torch, add on torch\n")


def test_a_second_process_imports_the_cached_kernels(cache):
    """The same program in two processes: the first writes the kernel files, the second
    finds them and writes nothing (their modification times do not change)."""
    script = textwrap.dedent("""
        import numpy as np, dtensor_compiler as dtc
        mesh = dtc.create_mesh([("x", 2)])
        f = dtc.compile(lambda a: np.exp(a) * 2.0 - a, backend="triton",
                        in_layouts=dtc.Layout(["x"], mesh))
        a = np.arange(8.0)
        assert np.allclose(np.asarray(f(a)), np.exp(a) * 2.0 - a)
    """)
    env = {**os.environ, "DTC_CACHE_DIR": str(cache)}
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=120)
    first = {p: p.stat().st_mtime_ns for p in (cache / "kernels").iterdir()}
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=120)
    assert len(first) == 1
    assert {p: p.stat().st_mtime_ns for p in (cache / "kernels").iterdir()} == first


def test_without_triton_the_backend_says_what_to_install():
    script = textwrap.dedent("""
        import sys
        sys.modules["triton"] = None  # as if it were not installed
        import dtensor_compiler as dtc
        try:
            dtc.compile(lambda a: a, backend="triton")
        except dtc.DTensorError as e:
            print(e)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    assert "backend 'triton' needs the triton package: pip install " \
           "\"dtensor-compiler[triton]\"" in out


def test_dtc_dump_and_explain_show_the_kernels(tmp_path, cache):
    program = tmp_path / "prog.py"
    program.write_text(textwrap.dedent("""
        import numpy as np
        import dtensor_compiler as dtc
        mesh = dtc.create_mesh([("x", 2)])

        @dtc.compile(backend="triton", in_layouts=dtc.Layout(["x"], mesh),
                     specs=(dtc.TensorSpec((8,), "float32"),))
        def f(a):
            return np.exp(a) * 2.0 + 1.0
    """))
    out = subprocess.run([sys.executable, "-m", "dtensor_compiler.cli", "dump",
                          f"{program}:f", "--stage", "fuse"], capture_output=True, text=True,
                         check=True, timeout=120, cwd=tmp_path).stdout
    assert "  %0 = kernel %a {body = f_k0_exp_multiply_add} : f32[4] @ {x}\n" in out
    assert "func @f_k0_exp_multiply_add(%a0: f32[4] @ {x}) -> (f32[4] @ {x}) {\n" in out
    out = subprocess.run([sys.executable, "-m", "dtensor_compiler.cli", "explain", f"{program}:f"],
                         capture_output=True, text=True, check=True, timeout=120,
                         cwd=tmp_path).stdout
    assert out.endswith("compute steps on the triton backend:\n"
                        "#  kernel                 runs on  ops                 how\n"
                        "1  f_k0_exp_multiply_add  triton   exp, multiply, add  elementwise\n"
                        "total: 1 triton\n")


def _softmax(a):
    e = np.exp(a - a.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _layernorm(x, g, b):
    mu = x.mean(axis=-1, keepdims=True)
    d = x - mu
    return d / np.sqrt((d * d).mean(axis=-1, keepdims=True) + 1e-5) * g + b


def _rmsnorm(x, g):
    return x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + 1e-6) * g


ROW_PROGRAMS = {
    "softmax": (_softmax, [(10, 33)]),
    "layernorm": (_layernorm, [(3, 6, 130), (130,), (1, 130)]),  # rows of 130, g, b
    "rmsnorm": (_rmsnorm, [(6, 1), (1,)]),  # 1-element rows
    "argmax": (lambda a: np.argmax(a, axis=-1, keepdims=True), [(12, 7)]),
    "mean": (lambda a, b: (a * b).mean(axis=-1, keepdims=True), [(2, 9, 5), (9, 1)]),
}


@pytest.mark.parametrize("name", ROW_PROGRAMS)
@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 2e-6),
                                        (np.float16, 4e-3), ("bfloat16", 3e-2)])
def test_row_programs_are_one_kernel_each(mesh, name, dtype, tol):
    """Softmax, layernorm, RMSnorm, argmax and mean (kept dims) over rows held whole by
    each device: the reductions and every elementwise op around them are one row kernel,
    over odd row lengths (masked), 1-element dims and broadcast operands, equal to numpy in
    float64 (fp16 and bf16 computed in fp32 and rounded after every op, as the IR's types
    say; bf16 within the interpreter's truncating rounding)."""
    if dtype == "bfloat16":
        dtype = pytest.importorskip("ml_dtypes").bfloat16
    fn, shapes = ROW_PROGRAMS[name]
    rng = np.random.default_rng(4)
    args = [rng.standard_normal(shape).astype(dtype) for shape in shapes]
    split = ["x" if shapes[0][0] % 2 == 0 else U] + [U] * (len(shapes[0]) - 1)
    layouts = [dtc.Layout(split, mesh)] + [dtc.Layout([U] * len(s), mesh) for s in shapes[1:]]
    f = dtc.compile(fn, in_layouts=tuple(layouts), backend="triton")
    got = np.asarray(f(*args))
    want = fn(*(a.astype(np.float64) for a in args))
    if name == "argmax":
        np.testing.assert_array_equal(got, fn(*args))
    else:
        assert got.dtype == dtype
        np.testing.assert_allclose(got.astype(np.float64), want, rtol=tol, atol=tol)
    lowered = f.lower(*args)
    ops = [op.name for op in parse_module(lowered.ir(stage="fuse")).main.ops]
    assert [n for n in ops if n != "iota"] == ["kernel"]  # (argmax's indices are an input)
    (source,) = _generated(lowered).values()
    assert "tl.sum(" in source or "tl.max(" in source or "tl.min(" in source


def test_row_kernels_propagate_nan_and_reduce_ints(mesh):
    """max and argmax propagate NaN as numpy's do (argmax picks the first NaN); an int32 sum
    accumulates in int64; a sum over dim 0 is not a row reduction."""
    def stats(a, n):
        return np.max(a, axis=-1), np.argmax(a, axis=-1), np.sum(n * 3, axis=-1), \
            np.sum(a, axis=0)

    layout = dtc.Layout(["y", U], mesh)
    t = dtc.compile(stats, in_layouts=(layout, layout), backend="triton")
    rng = np.random.default_rng(3)
    a = rng.standard_normal((8, 5))
    a[2, 3] = a[2, 4] = np.nan
    n = rng.integers(-9, 9, (8, 5)).astype(np.int32)
    for got, want in zip(t(a, n), stats(a, n)):  # (the dim-0 sum adds in another order)
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-14)
        assert np.asarray(got).dtype == want.dtype


def test_a_sharded_row_is_reduced_across_devices_between_kernels(mesh):
    """Softmax over rows split across y: each device's partial maxima and sums are
    all-reduced, so the row kernel ends at each reduction and the values still equal
    numpy."""
    f = dtc.compile(_softmax, in_layouts=dtc.Layout(["x", "y"], mesh), backend="triton")
    a = np.random.default_rng(5).standard_normal((6, 10))
    np.testing.assert_allclose(np.asarray(f(a)), _softmax(a), rtol=1e-13)
    assert [c.kind for c in f.lower(a).collectives()] == ["all_reduce", "all_reduce"]


def test_launches_are_tuned_once_per_shape_class_and_remembered(cache):
    """400,000 elements (both simulated devices in one launch): the interpreter's two block
    sizes are timed in the first process and the winner written beside the kernel; a second
    process reads it and times nothing."""
    script = textwrap.dedent("""
        import numpy as np, dtensor_compiler as dtc
        from dtensor_compiler.runtime import triton_tuning
        mesh = dtc.create_mesh([("x", 2)])
        f = dtc.compile(lambda a: np.exp(a) * 2.0 - a, backend="triton",
                        in_layouts=dtc.Layout(["x"], mesh))
        a = np.linspace(-1.0, 1.0, 400_000)
        assert np.allclose(np.asarray(f(a)), np.exp(a) * 2.0 - a)
        print(triton_tuning.TUNING_RUNS)
    """)
    env = {**os.environ, "DTC_CACHE_DIR": str(cache)}
    runs = [subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=120,
                           capture_output=True, text=True).stdout.strip() for _ in range(2)]
    assert runs == ["2", "0"]
    (table,) = (cache / "tuning").iterdir()
    assert list(json.loads(table.read_text())) == ["524288"]  # 400,000 rounded up


def test_infinite_constants_bools_and_mixed_comparisons(mesh):
    """-inf masking (a constant of the kernel), bool + bool (numpy's logical or: run op by
    op) and comparisons in numpy's promoted type (uint8 against int8, int64 against f32)."""
    layout = dtc.Layout(["x", U], mesh)
    a = np.array([[1.0, -1.0], [2.0, -3.0]])
    f = dtc.compile(lambda a: np.where(a > 0, a, -np.inf) * 2, in_layouts=layout,
                    backend="triton")
    np.testing.assert_array_equal(np.asarray(f(a)), np.where(a > 0, a, -np.inf) * 2)
    g = dtc.compile(lambda a, b: (a > 0) + (b > 0), in_layouts=(layout, layout),
                    backend="triton")
    b = np.array([[1.0, 1.0], [-2.0, -3.0]])
    np.testing.assert_array_equal(np.asarray(g(a, b)), (a > 0) + (b > 0))
    h = dtc.compile(lambda a, b: (a < b) | (a == b), in_layouts=(
        dtc.Layout(["x"], mesh), dtc.Layout(["x"], mesh)), backend="triton")
    u, i = np.array([200, 3, 255, 250], np.uint8), np.array([1, 5, -1, -100], np.int8)
    np.testing.assert_array_equal(np.asarray(h(u, i)), (u < i) | (u == i))
    big, f32 = np.array([2**24 + 1, 3]), np.array([16777216.0, 3.0], np.float32)
    k = dtc.compile(lambda a, b: a > b, in_layouts=(dtc.Layout(["x"], mesh),) * 2,
                    backend="triton")
    np.testing.assert_array_equal(np.asarray(k(big, f32)), big > f32)


CONTRACTIONS = {  # name: (function, operand shapes, layouts as dim names per operand)
    "matmul_gelu": (lambda x, w, b: gelu(x @ w + b), [(10, 37), (37, 20), (20,)],
                    [["x", U], [U, "y"], ["y"]]),
    "batched_broadcast": (lambda a, b: np.matmul(a, b) * 2.0, [(3, 1, 4, 5), (2, 5, 6)],
                          [[U] * 4, [U] * 3]),
    "attention_scores": (lambda q, k: np.einsum("bqhd,bkhd->bhqk", q, k) / 4.0,
                         [(2, 5, 3, 8), (2, 7, 3, 8)], [["x", U, U, U], ["x", U, U, U]]),
    "two_summed_letters": (lambda a, b: np.einsum("ijk,jkl->il", a, b), [(6, 3, 5), (3, 5, 9)],
                           [["x", U, U], [U, U, U]]),
    "matvec": (lambda a, v: np.einsum("mk,k->m", a, v) - 1.0, [(9, 17), (17,)],
               [["x", U], [U]]),
    "vector_matmul": (lambda v, a: v @ a, [(17,), (17, 9)], [[U], [U, "x"]]),
    "outer": (lambda a, b: np.einsum("i,j->ij", a, b), [(5,), (7,)], [[U], [U]]),
    "split_contracted": (lambda x, w: x @ w, [(8, 12), (12, 6)], [[U, "y"], ["y", U]]),
}


@pytest.mark.parametrize("name", CONTRACTIONS)
@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 2e-5),
                                        (np.float16, 1e-2), ("bfloat16", 5e-2)])
def test_contractions_with_their_epilogues_are_one_kernel(mesh, name, dtype, tol):
    """matmul, batched matmul with broadcast batch dims, einsums with several batch, free
    and summed letters, matrix-vector and outer products: one tiled kernel each with the
    elementwise ops after it, over sizes no block divides (masked), accumulated in fp32
    (fp64 for fp64) and rounded to the result's dtype as numpy rounds it. A contracted dim
    split over y leaves a pending sum, reduced after the kernel."""
    if dtype == "bfloat16":
        dtype = pytest.importorskip("ml_dtypes").bfloat16
    fn, shapes, dims = CONTRACTIONS[name]
    rng = np.random.default_rng(6)
    args = [rng.standard_normal(shape).astype(dtype) for shape in shapes]
    try:
        numpy_dtype = fn(*args).dtype  # (numpy's bf16 matmul gives float32)
    except TypeError:
        pytest.skip("numpy's einsum has no loop for bfloat16 (nor has ours, as numpy)")
    layouts = tuple(dtc.Layout(d, mesh) for d in dims)
    f = dtc.compile(fn, in_layouts=layouts, backend="triton")
    got = np.asarray(f(*args))
    want = fn(*(a.astype(np.float64) for a in args))
    assert got.dtype == numpy_dtype
    scale = max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got.astype(np.float64), want, rtol=tol, atol=tol * scale)
    lowered = f.lower(*args)
    ops = [op.name for op in parse_module(lowered.ir(stage="fuse")).main.ops]
    assert [n for n in ops if n not in ("all_reduce", "reshape")] == ["kernel"]
    (source,) = _generated(lowered).values()
    assert "tl.dot(" in source


def test_tanh_is_within_a_few_ulps_of_numpy():
    """tanh is written with exp (the interpreter has no libdevice): its series near 0 and
    the exp form beyond stay within 16 ulps of numpy in fp64 and fp32, across the switch."""
    mesh = dtc.create_mesh([("x", 1)])
    x = np.concatenate([np.linspace(-0.3, 0.3, 6001), np.linspace(-6.0, 6.0, 601),
                        [0.125, -0.125, 1e-300, 0.0, 40.0, -40.0]])
    for dtype in (np.float64, np.float32):
        f = dtc.compile(np.tanh, in_layouts=dtc.Layout([U], mesh), backend="triton")
        a = x.astype(dtype)
        got, want = np.asarray(f(a)), np.tanh(a)
        ulps = np.abs(got - want) / np.spacing(np.maximum(np.abs(want), np.finfo(dtype).tiny))
        assert ulps.max() <= 16, (dtype, a[ulps.argmax()])


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_kernels_run_on_the_gpu(mesh):
    """On a GPU (never in CI here): a linear layer with its epilogue, a softmax and a fused
    chain, in bf16 and fp32, equal numpy as in the interpreter."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    def f(x, w, b):
        return _softmax(gelu(x @ w + b))

    layouts = (dtc.Layout(["x", U], mesh), dtc.Layout([U, "y"], mesh), dtc.Layout(["y"], mesh))
    c = dtc.compile(f, in_layouts=layouts, backend="triton")
    rng = np.random.default_rng(7)
    for dtype, tol in ((np.float32, 1e-5), (ml_dtypes.bfloat16, 3e-2)):
        x, w, b = (rng.standard_normal(s).astype(dtype) for s in ((64, 96), (96, 128), (128,)))
        want = f(*(a.astype(np.float64) for a in (x, w, b)))
        np.testing.assert_allclose(np.asarray(c(x, w, b)).astype(np.float64), want, rtol=tol,
                                   atol=tol)


def test_zero_dim_values_on_a_single_device():
    """A 0-d value on a mesh without dims (held as a numpy scalar) goes through elementwise
    and contraction kernels (the launchers indexed it into a scalar torch refuses)."""
    one = dtc.Layout.from_device("CPU:0")
    f = dtc.compile(lambda a: np.exp(a) + 1.0, in_layouts=one, backend="triton")
    assert np.asarray(f(np.float64(3.0))) == np.exp(3.0) + 1.0
    g = dtc.compile(lambda a, b: a @ b + 1.0, in_layouts=(one, one), backend="triton")
    assert np.asarray(g(np.arange(3.0), np.arange(3.0))) == 6.0
