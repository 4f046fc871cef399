"""Planning a training step against planning the forward pass alone.

The L-layer transformer of `plan_speed.py` (B=8, S=128, D=512, 8 heads, MLP 4·D, dp=2 × tp=4,
Megatron layouts), once as the forward pass and once as a training step: the mean-square loss
of its output, `dtc.value_and_grad` with respect to every parameter, and an SGD update, all in
one compiled function. Both traced and planned with `lower()`, alternately for 7 rounds (a
fresh compile each time, from a collected heap): the best time of each, and the median of the
rounds' ratios, which a machine whose speed drifts moves least. Target: the step plans in at
most 3× the forward's time, linearly in L. Also its collectives per layer and the
bytes each device sends per layer (the optimum is 2 all_reduces over tp in each direction
plus the dp gradient all_reduces).

Run: ``python benchmarks/train_plan_speed.py`` (table, results/train_plan_speed.json).
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import numpy as np  # noqa: E402
import transformer  # noqa: E402
from report import report  # noqa: E402

import dtensor_compiler as dtc  # noqa: E402

B, S, D, HEADS = 8, 128, 512, 8


def training_step(layers: int):
    forward = transformer.make_forward(layers, HEADS)

    def loss(x, *params):
        return np.mean(forward(x, *params) ** 2)

    def step(x, *params):
        value, grads = dtc.value_and_grad(loss, argnums=tuple(range(1, len(params) + 1)))(
            x, *params)
        return (value, *(p - 0.01 * g for p, g in zip(params, grads)))
    return step


def plan(fn, in_layouts, out_layouts, specs) -> tuple[float, list]:
    """Seconds to trace and plan `fn` once, and its collectives."""
    f = dtc.compile(fn, in_layouts=in_layouts, out_layouts=out_layouts, keep_ir=False)
    gc.collect()  # each run starts from a clean heap (the compile's own garbage counts)
    start = time.perf_counter()
    low = f.lower(*specs)
    return time.perf_counter() - start, low.collectives()


def paired(forward, step, in_layouts, out_layout, step_outs, specs, rounds: int = 7
           ) -> tuple[float, float, float, list]:
    """Best forward and step times over `rounds` alternating runs, the median ratio, and the
    step's collectives."""
    fwd, stp, ratios = [], [], []
    for _ in range(rounds):
        t_fwd, _ = plan(forward, in_layouts, out_layout, specs)
        t_step, cols = plan(step, in_layouts, step_outs, specs)
        fwd.append(t_fwd)
        stp.append(t_step)
        ratios.append(t_step / t_fwd)
    return min(fwd), min(stp), statistics.median(ratios), cols


def main() -> None:
    mesh = dtc.create_mesh([("dp", 2), ("tp", 4)])
    rows = []
    for layers in (1, 4, 16, 32):
        in_layouts, out_layout = transformer.layouts(mesh, layers)
        specs = transformer.specs(B, S, D, 4 * D, layers)
        outs = (dtc.Layout([], mesh), *in_layouts[1:])
        t_fwd, t_step, ratio, cols = paired(transformer.make_forward(layers, HEADS),
                                            training_step(layers), in_layouts, out_layout,
                                            outs, specs)
        tp = [c for c in cols if c.mesh_dims == ("tp",)]
        rows.append([layers, round(t_fwd, 3), round(t_step, 3), round(ratio, 2),
                     round(1000 * t_step / layers, 1), len(cols), round(len(tp) / layers, 2),
                     round(sum(c.bytes for c in cols) / layers / 2**20, 2)])
    report("train_plan_speed", ["layers", "forward_s", "step_s", "median_ratio",
                                "step_ms_per_layer",
                                "collectives", "tp_collectives_per_layer",
                                "MiB_per_layer"], rows,
           {"target": "step planning <= 3x the forward's, linear in L",
            "optimum": "4 tp all_reduces per layer (2 forward, 2 backward) plus dp gradients"})


if __name__ == "__main__":
    main()
