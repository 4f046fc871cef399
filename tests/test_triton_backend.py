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

import dtensor_compiler as dtc

pytest.importorskip("triton")
U = dtc.UNSHARDED


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DTC_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def mesh() -> dtc.Mesh:
    return dtc.create_mesh([("x", 2), ("y", 4)])


def layernorm_gelu(x, g):
    mu = x.mean(axis=-1, keepdims=True)
    d = x - mu
    var = (d * d).mean(axis=-1, keepdims=True)
    y = d / np.sqrt(var + 1e-5) * g
    return 0.5 * y * (1.0 + np.tanh(0.79788456 * (y + 0.044715 * y ** 3)))


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
    sources = f.lower(x, g).kernel_sources()
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
    assert len(c.lower(a, row, s, b).kernel_sources()) == 1


def test_an_op_the_templates_do_not_cover_runs_its_body_op_by_op(mesh):
    f = dtc.compile(lambda a, b: np.arctan2(a, b) + 1.0, in_layouts=(
        dtc.Layout(["x", U], mesh), dtc.Layout(["x", U], mesh)), backend="triton")
    a, b = np.linspace(-1, 1, 12).reshape(4, 3), np.full((4, 3), 0.5)
    np.testing.assert_allclose(np.asarray(f(a, b)), np.arctan2(a, b) + 1.0)
    (text,) = f.lower(a, b).kernel_sources().values()
    assert text.startswith("# @lambda_k0_arctan2_add runs op by op on numpy: op arctan2")


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


def test_dtc_dump_prints_the_fused_stage(tmp_path, cache):
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


def test_row_reductions_with_their_prologues(mesh):
    """A sum, max or min over the last dim, with the elementwise ops that feed only it, is
    one row kernel: softmax is two reductions and two elementwise kernels, RMSnorm's mean of
    squares one row kernel. Rows of 33 and 130 (not powers of two) are masked; max
    propagates NaN as numpy's does; reductions over other dims run op by op."""
    def softmax(a):
        s = a - a.max(axis=-1, keepdims=True)
        e = np.exp(s)
        return e / e.sum(axis=-1, keepdims=True)

    def rms(x, g):
        return x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + 1e-6) * g

    def stats(a, n):
        return np.max(a, axis=-1), np.min(a * 2.0, axis=-1), np.sum(n * 3, axis=-1), \
            np.sum(a, axis=0)

    rng = np.random.default_rng(3)
    s = dtc.compile(softmax, in_layouts=dtc.Layout(["x", U], mesh), backend="triton")
    a = rng.standard_normal((10, 33))
    np.testing.assert_allclose(np.asarray(s(a)), softmax(a), rtol=1e-13)
    assert sorted(s.lower(a).kernel_sources()) == [
        "softmax_k0_reduce_max", "softmax_k1_subtract_exp", "softmax_k2_reduce_sum",
        "softmax_k3_divide"]
    r = dtc.compile(rms, in_layouts=(dtc.Layout(["x", U], mesh), dtc.Layout([U], mesh)),
                    backend="triton")
    x, g = rng.standard_normal((6, 130)), rng.standard_normal(130)
    np.testing.assert_allclose(np.asarray(r(x, g)), rms(x, g), rtol=1e-13)
    assert "def rms_k0_multiply_reduce_sum(" in r.lower(x, g).kernel_sources()[
        "rms_k0_multiply_reduce_sum"]
    t = dtc.compile(stats, in_layouts=(dtc.Layout(["y", U], mesh), dtc.Layout(["y", U], mesh)),
                    backend="triton")
    a = rng.standard_normal((8, 5))
    a[2, 3] = np.nan
    n = rng.integers(-9, 9, (8, 5)).astype(np.int32)
    for got, want in zip(t(a, n), stats(a, n)):  # (the dim-0 sum adds in another order)
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-14)
        assert np.asarray(got).dtype == want.dtype


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
