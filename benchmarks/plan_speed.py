"""Planning time of an L-layer transformer forward, and its collectives per layer.

Model: B=8, S=128, D=512, 8 heads, MLP 4·D, Megatron tensor parallelism on a dp=2 × tp=4 mesh.
Targets: 64 layers (about 10k ops) traced and planned in under 1 s, growing linearly with L
(our IR has about 48 ops per layer, so L = 200 is the row with about 10k ops);
2 all_reduces per layer, each of (B/2)·S·D floats.

Run: ``python benchmarks/plan_speed.py`` (prints a table, writes results/plan_speed.json).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import transformer  # noqa: E402
from report import report  # noqa: E402

import dtensor_compiler as dtc  # noqa: E402

B, S, D, HEADS = 8, 128, 512, 8


def plan(layers: int, repeats: int = 3) -> tuple[float, int, list]:
    mesh = dtc.create_mesh([("dp", 2), ("tp", 4)])
    in_layouts, out_layout = transformer.layouts(mesh, layers)
    arg_specs = transformer.specs(B, S, D, 4 * D, layers)
    best = float("inf")
    for _ in range(repeats):
        f = dtc.compile(transformer.make_forward(layers, HEADS), in_layouts=in_layouts,
                        out_layouts=out_layout, keep_ir=False)
        start = time.perf_counter()
        low = f.lower(*arg_specs)
        best = min(best, time.perf_counter() - start)
    return best, len(low.module.main.ops), low.collectives()


def main() -> None:
    rows = []
    for layers in (1, 8, 32, 64, 200):
        seconds, ops, cols = plan(layers)
        per_layer = [c for c in cols]
        ar = [c for c in per_layer if c.kind == "all_reduce"]
        rows.append([layers, ops, round(seconds, 4), round(1000 * seconds / layers, 3),
                     len(cols), len(ar), round(len(cols) / layers, 2),
                     ar[0].bytes // 4 if ar else 0])
    expected = (B // 2) * S * D
    report("plan_speed", ["layers", "ops", "plan_s", "ms_per_layer", "collectives",
                          "all_reduces", "collectives_per_layer", "floats_per_all_reduce"],
           rows, {"target": "64 layers < 1 s, linear in L; 2 all_reduces/layer of "
                            f"(B/2)*S*D = {expected} floats"})


if __name__ == "__main__":
    main()
