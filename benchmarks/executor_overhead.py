"""Per-op and per-call overhead of the simulated executor, against plain numpy.

1. A chain of 200 elementwise ops (add, multiply, tanh, subtract in turn) on one 64x64 f32
   array, inputs already on a dp=2 x tp=4 mesh (replicated, so each op runs once), against the
   same numpy function on the global array. Target: at most 1.5x numpy.
2. A cache-hit call of a tiny compiled function (``x * 2 + 1`` on 4 floats, a numpy argument
   in, a DTensor out). Target: at most 60 us per call.

Run: ``python benchmarks/executor_overhead.py`` (prints a table, writes
results/executor_overhead.json).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
from report import report

import dtensor_compiler as dtc

CHAIN = 200


def chain(x):
    y = x
    for i in range(CHAIN // 4):
        y = np.tanh((y + 0.5) * 0.9) - 0.1 * i
    return y


def tiny(x):
    return x * 2 + 1


def per_call(fn: Callable[[], object], calls: int, repeats: int = 7) -> float:
    """Best over `repeats` of the mean seconds per call of `calls` calls."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def main() -> None:
    mesh = dtc.create_mesh([("dp", 2), ("tp", 4)])
    replicated = dtc.Layout.replicated(mesh, 2)
    x = np.random.default_rng(0).standard_normal((64, 64), dtype=np.float32)
    f = dtc.compile(chain, in_layouts=replicated, keep_ir=False)
    xd = dtc.copy_to_mesh(x, replicated)
    np.testing.assert_allclose(np.asarray(f(xd)), chain(x), rtol=1e-5, atol=1e-5)
    assert len(f.lower(xd).module.main.ops) >= CHAIN
    t_numpy = per_call(lambda: chain(x), 20)
    t_sim = per_call(lambda: f(xd), 20)

    g = dtc.compile(tiny, in_layouts=dtc.Layout.replicated(mesh, 1))
    v = np.arange(4, dtype=np.float32)
    np.testing.assert_array_equal(np.asarray(g(v)), tiny(v))
    t_tiny = per_call(lambda: g(v), 2000)
    t_tiny_numpy = per_call(lambda: tiny(v), 2000)

    report("executor_overhead", ["case", "numpy_us", "compiled_us", "ratio"], [
        [f"chain of {CHAIN} elementwise ops, 64x64 f32", round(t_numpy * 1e6, 1),
         round(t_sim * 1e6, 1), round(t_sim / t_numpy, 2)],
        ["cache-hit call of x * 2 + 1 on 4 floats", round(t_tiny_numpy * 1e6, 2),
         round(t_tiny * 1e6, 1), round(t_tiny / t_tiny_numpy, 1)],
    ], {"targets": "chain ratio <= 1.5; tiny call <= 60 us", "mesh": "dp=2 x tp=4"})


if __name__ == "__main__":
    main()
