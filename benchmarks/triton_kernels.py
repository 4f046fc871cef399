"""Generated Triton kernels against torch eager and the numpy backend.

On a GPU (targets, from the Triton issue): a fused chain ``gelu(x * w + b)`` on 2^28
elements at least 2x faster than unfused torch eager and at least 80% of the memory
bandwidth; softmax and layernorm on 8192x8192 at least torch's speed; a 4096^3 bf16 matmul
at least 0.9x torch.matmul's TFLOP/s; the MLP (``gelu(x @ w1 + b) @ w2``) at least torch's
speed. Without a GPU this is a smoke run at small sizes in Triton's interpreter on the CPU,
whose figures say nothing of a GPU (every program is simulated in numpy); the README says
the GPU figures are pending.

Each case runs one compiled function on a 1-D mesh of 1 device, ours with
``backend="triton"`` and with the numpy backend, against the same function written in torch
(eager, unfused); best of `REPEATS` after a warm-up (the first call generates, compiles and
tunes the kernels).

Run: ``python benchmarks/triton_kernels.py`` (table, results/triton_kernels.json).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import numpy as np
import torch
from report import report

import dtensor_compiler as dtc
from dtensor_compiler.runtime.triton_device import to_device  # (sets TRITON_INTERPRET first)

GPU = torch.cuda.is_available()
REPEATS = 5
GELU_ELEMENTS = 1 << 28 if GPU else 1 << 20
ROWS = 8192 if GPU else 512
MATMUL = 4096 if GPU else 256
MATMUL_DTYPE = "bfloat16" if GPU else "float32"  # (the interpreter widens bf16 dots)


def gelu_chain(x, w, b):
    y = x * w + b
    return 0.5 * y * (1.0 + np.tanh(0.79788456 * (y + 0.044715 * y ** 3)))


def softmax(a):
    e = np.exp(a - a.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def layernorm(x):
    mu = x.mean(axis=-1, keepdims=True)
    d = x - mu
    return d / np.sqrt((d * d).mean(axis=-1, keepdims=True) + 1e-5)


def matmul(a, b):
    return a @ b


def mlp(x, w1, b, w2):
    return gelu_chain(x @ w1, 1.0, b) @ w2


def torch_mlp(x, w1, b, w2):
    return torch_gelu_chain(x @ w1, 1.0, b) @ w2


def torch_gelu_chain(x, w, b):
    y = x * w + b
    return 0.5 * y * (1.0 + torch.tanh(0.79788456 * (y + 0.044715 * y ** 3)))


def torch_softmax(a):
    e = torch.exp(a - a.amax(dim=-1, keepdim=True))
    return e / e.sum(dim=-1, keepdim=True)


def torch_layernorm(x):
    mu = x.mean(dim=-1, keepdim=True)
    d = x - mu
    return d / torch.sqrt((d * d).mean(dim=-1, keepdim=True) + 1e-5)


def best(run: Callable[[], object]) -> float:
    run()
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    mesh = dtc.create_mesh([("x", 1)])
    rng = np.random.default_rng(0)
    n = GELU_ELEMENTS
    m = MATMUL
    square = (m, m)
    matmul_args = tuple(_array(rng, square, MATMUL_DTYPE) for _ in range(2))
    mlp_args = (rng.standard_normal((m, m // 2), dtype=np.float32),
                rng.standard_normal((m // 2, 2 * m), dtype=np.float32) / m,
                rng.standard_normal(2 * m, dtype=np.float32),
                rng.standard_normal((2 * m, m // 2), dtype=np.float32) / m)
    cases = [  # name, function, its torch form, arguments, bytes moved, flops
        ("gelu(x * w + b)", gelu_chain, torch_gelu_chain,
         (rng.standard_normal(n, dtype=np.float32), 1.5, 0.25), 3 * 4 * n, None),
        ("softmax rows", softmax, torch_softmax,
         (rng.standard_normal((ROWS, ROWS), dtype=np.float32),), 2 * 4 * ROWS * ROWS, None),
        ("layernorm rows", layernorm, torch_layernorm,
         (rng.standard_normal((ROWS, ROWS), dtype=np.float32),), 2 * 4 * ROWS * ROWS, None),
        (f"matmul {MATMUL_DTYPE}", matmul, matmul, matmul_args, None, 2 * m ** 3),
        ("mlp gelu(x @ w1 + b) @ w2", mlp, torch_mlp, mlp_args, None,
         2 * 2 * m * (m // 2) * (2 * m)),
    ]
    rows = []
    for name, fn, reference, args, moved, flops in cases:
        specs = [a for a in args if isinstance(a, np.ndarray)]
        layouts = tuple(dtc.Layout([dtc.UNSHARDED] * a.ndim, mesh) for a in specs) + (
            None,) * (len(args) - len(specs))  # (Python numbers are constants)
        fused = dtc.compile(fn, in_layouts=layouts, backend="triton")
        plain = dtc.compile(fn, in_layouts=layouts)
        placed = [dtc.copy_to_mesh(a, layout) for a, layout in zip(specs, layouts)]
        rest = args[len(specs):]
        tensors = [to_device(a) for a in specs]
        t_fused = best(lambda f=fused, p=placed, r=rest: f(*p, *r))
        t_plain = best(lambda f=plain, p=placed, r=rest: f(*p, *r))
        t_torch = best(lambda f=reference, t=tensors, r=rest: f(*t, *(float(x) for x in r)))
        kernels = len(fused.lower(*placed, *rest).kernel_sources())
        rows.append([name, "x".join(map(str, specs[0].shape)), kernels,
                     round(t_fused * 1e3, 2), round(t_plain * 1e3, 2), round(t_torch * 1e3, 2),
                     round(t_torch / t_fused, 3),
                     None if moved is None else round(moved / t_fused / 2**30, 3),
                     None if flops is None else round(flops / t_fused / 1e12, 4)])
    device = torch.cuda.get_device_name() if GPU else "none: Triton interpreter on the CPU"
    report("triton_kernels", ["case", "shape", "kernels", "triton_ms", "numpy_backend_ms",
                              "torch_eager_ms", "speed_vs_torch", "GiB/s", "TFLOP/s"], rows,
           {"gpu": device, "interpreted": os.environ.get("TRITON_INTERPRET") == "1",
            "repeats": f"best of {REPEATS} after a warm-up",
            "targets (GPU)": "gelu chain >= 2x torch eager and >= 80% of memory bandwidth; "
                             "softmax, layernorm, mlp >= 1x torch; matmul >= 0.9x torch"})


def _array(rng: np.random.Generator, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    a = rng.standard_normal(shape, dtype=np.float32)
    if dtype == "bfloat16":
        import ml_dtypes
        return a.astype(ml_dtypes.bfloat16)
    return a


if __name__ == "__main__":
    main()
