"""Simulated-mesh run time of one transformer training step against hand-written numpy.

One block of `examples/transformer.py` (B=8, S=128, D=512, 8 heads, MLP 4·D, float32) with
Megatron layouts on the dp=2 × tp=4 mesh: the mean-square loss of its output,
`dtc.value_and_grad` with respect to its 8 parameters and an SGD update, compiled as one
program, against the same step in plain numpy with its gradients written out by hand
(`numpy_step`, checked against the compiled step's values). Target: simulated / numpy ≤ 1.3.

Run: ``python benchmarks/runtime_train_step.py`` (table, results/runtime_train_step.json).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import numpy as np  # noqa: E402
import transformer  # noqa: E402
from report import report  # noqa: E402

import dtensor_compiler as dtc  # noqa: E402

B, S, D, HEADS, LR, EPS = 8, 128, 512, 8, 0.01, 1e-5


def _layernorm(x, g):
    mu = x.mean(-1, keepdims=True)
    xc = x - mu
    inv = 1 / np.sqrt((xc * xc).mean(-1, keepdims=True) + EPS)
    xhat = xc * inv
    return xhat * g, (xhat, inv)


def _layernorm_back(dy, g, saved):
    xhat, inv = saved
    dg = (dy * xhat).sum((0, 1))
    dxhat = dy * g
    dx = inv * (dxhat - dxhat.mean(-1, keepdims=True)
                - xhat * (dxhat * xhat).mean(-1, keepdims=True))
    return dx, dg


def _heads(t):
    return t.reshape(B, S, HEADS, D // HEADS).transpose(0, 2, 1, 3)


def _merge(t):
    return t.transpose(0, 2, 1, 3).reshape(B, S, D)


def _outer(a, b):
    """sum over batch and sequence of a[..., :, None] * b[..., None, :] (a weight gradient)."""
    return a.reshape(-1, a.shape[-1]).T @ b.reshape(-1, b.shape[-1])


def numpy_step(x, g1, wq, wk, wv, wo, g2, w1, w2):
    """Loss, and the parameters after one SGD step, with the backward written by hand."""
    scale = 1 / (D // HEADS) ** 0.5
    h, ln1 = _layernorm(x, g1)
    q, k, v = _heads(h @ wq), _heads(h @ wk), _heads(h @ wv)
    s = q @ k.transpose(0, 1, 3, 2) * scale
    e = np.exp(s - s.max(-1, keepdims=True))
    p = e / e.sum(-1, keepdims=True)
    a = _merge(p @ v)
    x1 = x + a @ wo
    h2, ln2 = _layernorm(x1, g2)
    t = np.tanh(h2 @ w1)
    out = x1 + t @ w2
    loss = np.mean(out * out)

    dout = out * (2 / out.size)
    dw2 = _outer(t, dout)
    du = (dout @ w2.T) * (1 - t * t)
    dw1 = _outer(h2, du)
    dx1, dg2 = _layernorm_back(du @ w1.T, g2, ln2)
    dx1 += dout
    dwo = _outer(a, dx1)
    da = _heads(dx1 @ wo.T)
    dp = da @ v.transpose(0, 1, 3, 2)
    dv = p.transpose(0, 1, 3, 2) @ da
    ds = p * (dp - (dp * p).sum(-1, keepdims=True)) * scale
    dq, dk = _merge(ds @ k), _merge(ds.transpose(0, 1, 3, 2) @ q)
    dwq, dwk, dwv = (_outer(h, d) for d in (dq, dk, _merge(dv)))
    dh = dq @ wq.T + dk @ wk.T + _merge(dv) @ wv.T
    _, dg1 = _layernorm_back(dh, g1, ln1)
    params = (g1, wq, wk, wv, wo, g2, w1, w2)
    grads = (dg1, dwq, dwk, dwv, dwo, dg2, dw1, dw2)
    return (loss, *(w - LR * dw for w, dw in zip(params, grads)))


def compiled_step(mesh):
    in_layouts, _ = transformer.layouts(mesh, 1)
    forward = transformer.make_forward(1, HEADS)

    def loss(x, *params):
        return np.mean(forward(x, *params) ** 2)

    @dtc.compile(in_layouts=in_layouts, out_layouts=(dtc.Layout([], mesh), *in_layouts[1:]))
    def step(x, *params):
        value, grads = dtc.value_and_grad(loss, argnums=tuple(range(1, 9)))(x, *params)
        return (value, *(p - LR * g for p, g in zip(params, grads)))
    return step, in_layouts


def paired(a, b, rounds: int = 9) -> tuple[float, float, float]:
    """Best seconds of `a` and of `b`, run alternately `rounds` times (so that the load of a
    shared machine falls on both alike), and the median of the per-round ratios b / a."""
    times_a, times_b = [], []
    for _ in range(rounds):
        for fn, out in ((a, times_a), (b, times_b)):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    ratios = sorted(tb / ta for ta, tb in zip(times_a, times_b))
    return min(times_a), min(times_b), ratios[len(ratios) // 2]


def main() -> None:
    mesh = dtc.create_mesh([("dp", 2), ("tp", 4)])
    rng = np.random.default_rng(0)
    specs = transformer.specs(B, S, D, 4 * D, 1)
    args = [(rng.standard_normal(s.shape) * (1.0 if i == 0 else 0.05)).astype(np.float32)
            for i, s in enumerate(specs)]
    args[1] = args[1] + 1  # layernorm gains around 1
    args[6] = args[6] + 1
    step, layouts = compiled_step(mesh)
    on_mesh = [dtc.copy_to_mesh(a, lay) for a, lay in zip(args, layouts)]
    got = step(*on_mesh)
    want = numpy_step(*args)
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), w, rtol=2e-3, atol=2e-5)
    t_numpy, t_sim, ratio = paired(lambda: numpy_step(*args), lambda: step(*on_mesh))
    report("runtime_train_step",
           ["case", "numpy_s", "simulated_s", "ratio_of_bests", "median_ratio"],
           [[f"transformer block step B={B} S={S} D={D}, dp=2 tp=4", round(t_numpy, 4),
             round(t_sim, 4), round(t_sim / t_numpy, 3), round(ratio, 3)]],
           {"target": "ratio <= 1.3",
            "timing": "9 rounds, numpy and simulated alternately; best of each, and the "
                      "median of the rounds' ratios",
            "numpy": "the same step with hand-written gradients, float32, one process",
            "inputs": "DTensors already on the mesh"})


if __name__ == "__main__":
    main()
