"""Simulated-mesh run time of a Megatron MLP against plain numpy in the same process.

x[4096,1024] {dp,-} @ w1[1024,4096] {-,tp} → tanh → @ w2[4096,1024] {tp,-} → {dp,-} on a
dp=2 × tp=4 mesh. Target: simulated / numpy ≤ 1.3.

The same MLP with a batch of 4095 and a hidden size of 4095, which divide by neither dp nor
tp: every block is padded (2048 rows of room on dp, 1024 hidden columns on tp) and the second
matmul, contracting over the padded hidden dim, masks both its operands. Target: its ratio
stays within the padding fraction (1/4095 per dim) of the even case's.

Run: ``python benchmarks/runtime_mlp.py`` (prints a table, writes results/runtime_mlp.json).
"""

from __future__ import annotations

import time

import numpy as np
from report import report

import dtensor_compiler as dtc

U = dtc.UNSHARDED
D = 1024


def mlp(x, w1, w2):
    return np.tanh(x @ w1) @ w2


def best_of(fn, repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def run_case(n: int, hidden: int) -> tuple[float, float]:
    """Seconds of plain numpy and of the simulated mesh, best of five."""
    mesh = dtc.create_mesh([("dp", 2), ("tp", 4)])
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, D), dtype=np.float32)
    w1 = rng.standard_normal((D, hidden), dtype=np.float32) * 0.03
    w2 = rng.standard_normal((hidden, D), dtype=np.float32) * 0.03
    layouts = (dtc.Layout(["dp", U], mesh), dtc.Layout([U, "tp"], mesh),
               dtc.Layout(["tp", U], mesh))
    f = dtc.compile(mlp, in_layouts=layouts, out_layouts=dtc.Layout(["dp", U], mesh))
    args = [dtc.copy_to_mesh(a, lay) for a, lay in zip((x, w1, w2), layouts)]
    np.testing.assert_allclose(np.asarray(f(*args)), mlp(x, w1, w2), rtol=1e-3, atol=1e-3)
    return best_of(lambda: mlp(x, w1, w2)), best_of(lambda: f(*args))


def main() -> None:
    rows = []
    for n, hidden in ((4096, 4096), (4095, 4095)):
        t_numpy, t_sim = run_case(n, hidden)
        even = "" if n % 2 == 0 else " (uneven)"
        rows.append([f"MLP {n}x{D}, hidden {hidden}, dp=2 tp=4{even}", round(t_numpy, 4),
                     round(t_sim, 4), round(t_sim / t_numpy, 3)])
    report("runtime_mlp", ["case", "numpy_s", "simulated_s", "ratio"], rows,
           {"target": "ratio <= 1.3; the uneven ratio within the padding fraction "
                      "(1/4095) of the even one", "inputs": "DTensors already on the mesh"})


if __name__ == "__main__":
    main()
