"""Simulated-mesh run time of a Megatron MLP against plain numpy in the same process.

x[4096,1024] {dp,-} @ w1[1024,4096] {-,tp} → tanh → @ w2[4096,1024] {tp,-} → {dp,-} on a
dp=2 × tp=4 mesh. Target: simulated / numpy ≤ 1.3.

Run: ``python benchmarks/runtime_mlp.py`` (prints a table, writes results/runtime_mlp.json).
"""

from __future__ import annotations

import time

import numpy as np
from report import report

import dtensor_compiler as dtc

U = dtc.UNSHARDED
N, D, HIDDEN = 4096, 1024, 4096


def mlp(x, w1, w2):
    return np.tanh(x @ w1) @ w2


def best_of(fn, repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    mesh = dtc.create_mesh([("dp", 2), ("tp", 4)])
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, D), dtype=np.float32)
    w1 = rng.standard_normal((D, HIDDEN), dtype=np.float32) * 0.03
    w2 = rng.standard_normal((HIDDEN, D), dtype=np.float32) * 0.03
    layouts = (dtc.Layout(["dp", U], mesh), dtc.Layout([U, "tp"], mesh),
               dtc.Layout(["tp", U], mesh))
    f = dtc.compile(mlp, in_layouts=layouts, out_layouts=dtc.Layout(["dp", U], mesh))
    args = [dtc.copy_to_mesh(a, lay) for a, lay in zip((x, w1, w2), layouts)]
    np.testing.assert_allclose(np.asarray(f(*args)), mlp(x, w1, w2), rtol=1e-3, atol=1e-3)
    t_numpy = best_of(lambda: mlp(x, w1, w2))
    t_sim = best_of(lambda: f(*args))
    report("runtime_mlp", ["case", "numpy_s", "simulated_s", "ratio"],
           [[f"MLP {N}x{D}, hidden {HIDDEN}, dp=2 tp=4", round(t_numpy, 4), round(t_sim, 4),
             round(t_sim / t_numpy, 3)]],
           {"target": "ratio <= 1.3", "inputs": "DTensors already on the mesh"})


if __name__ == "__main__":
    main()
