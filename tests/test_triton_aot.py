"""Every kernel the triton backend generates for these programs compiles for sm_90 and sm_80
ahead of time (`runtime.triton_aot`, a process without the interpreter), and the check fails
on what only a GPU compiler rejects."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import dtensor_compiler as dtc

pytest.importorskip("triton")
ml_dtypes = pytest.importorskip("ml_dtypes")
U = dtc.UNSHARDED


def _programs(mesh: dtc.Mesh) -> list[tuple[object, tuple[dtc.Layout, ...], tuple]]:
    rng = np.random.default_rng(0)

    def gelu(x, g):
        y = x * g
        return 0.5 * y * (1.0 + np.tanh(0.79788456 * (y + 0.044715 * y ** 3)))

    def select(a, b, n):
        return np.where(a > b, np.sqrt(np.abs(a)), np.exp(-b)).astype(np.float32) + n

    def softmax(a):
        e = np.exp(a - a.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    row = (dtc.Layout(["x", "y"], mesh), dtc.Layout(["y"], mesh))
    out = []
    for dtype in (np.float64, np.float32, np.float16):
        x = rng.standard_normal((6, 8)).astype(dtype)
        out.append((gelu, row, (x, x[0])))
    for dtype in (np.float32, np.float16):
        out.append((softmax, (dtc.Layout(["x", U], mesh),),
                    (rng.standard_normal((6, 40)).astype(dtype),)))
    for dtype in (np.float64, np.float32, np.float16, ml_dtypes.bfloat16):  # matmul + GELU
        x, w = (rng.standard_normal(s).astype(dtype) for s in ((6, 40), (40, 8)))
        out.append((lambda x, w, g=gelu: g(x @ w, 1.0), (dtc.Layout(["x", U], mesh),
                                                          dtc.Layout([U, "y"], mesh)), (x, w)))
    q = rng.standard_normal((2, 5, 3, 8)).astype(np.float32)
    out.append((lambda q, k: np.einsum("bqhd,bkhd->bhqk", q, k),
                (dtc.Layout(["x", U, U, U], mesh),) * 2, (q, q)))
    a = rng.standard_normal((6, 8))
    out.append((select, (dtc.Layout(["x", U], mesh),) * 2 + (dtc.Layout(["y"], mesh),),
                (a, a.T.copy().T, np.arange(8, dtype=np.int32))))
    return out


def _aot(directory: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, "-m", "dtensor_compiler.runtime.triton_aot",
                           str(directory)], capture_output=True, text=True, env=env,
                          timeout=300)


def test_every_generated_kernel_compiles_for_sm90_and_sm80(tmp_path, monkeypatch):
    monkeypatch.setenv("DTC_CACHE_DIR", str(tmp_path))
    mesh = dtc.create_mesh([("x", 2), ("y", 4)])
    names = set()
    for fn, layouts, args in _programs(mesh):
        f = dtc.compile(fn, in_layouts=layouts, backend="triton")
        f(*args)  # generates (and runs) the kernels
        names |= {r.name for r in f.lower(*args).kernel_runs() if r.runs_on == "triton"}
    done = _aot(tmp_path / "kernels")
    assert done.returncode == 0, done.stderr
    for name in names:
        assert f"{name}: sm_90 cubin" in done.stdout and f"{name}: sm_80 cubin" in done.stdout


def test_a_kernel_only_the_gpu_compiler_rejects_fails_the_check(tmp_path):
    """exp of fp16 runs in the interpreter; the GPU compiler wants fp32 (the code generator
    upcasts for that reason), and the check fails naming the kernel."""
    (tmp_path / "half_exp.py").write_text(textwrap.dedent('''
        import triton
        import triton.language as tl

        SIGNATURE = {"a_ptr": "*fp16", "out_ptr": "*fp16"}


        @triton.jit
        def half_exp(a_ptr, out_ptr, BLOCK: tl.constexpr):
            i = tl.arange(0, BLOCK)
            tl.store(out_ptr + i, tl.exp(tl.load(a_ptr + i)))
    '''))
    done = _aot(tmp_path)
    assert done.returncode == 1
    assert "FAILED half_exp (half_exp.py) on sm_90: Expected dtype ['fp32', 'fp64'] but got " \
           "fp16 (at 3:26)" in done.stderr
