"""Optimizers: a compiled training step with each optimizer equals the update written out in
numpy, over several steps, with the state in its parameter's layout or sharded over dp."""

from __future__ import annotations

import numpy as np
import pytest

import dtensor_compiler as dtc

U = dtc.UNSHARDED
MESH = dtc.create_mesh([("dp", 2), ("tp", 4)])
W = (dtc.Layout([U, "tp"], MESH), dtc.Layout(["tp", U], MESH))
ZERO = (dtc.Layout(["dp", "tp"], MESH), dtc.Layout([("tp", "dp"), U], MESH))
ROWS = dtc.Layout(["dp", U], MESH)
SCALAR = dtc.Layout([], MESH)


def loss(w1, w2, x, y):
    return np.mean((np.tanh(x @ w1) @ w2 - y) ** 2)


def reference(name, params, grads, state, t, lr):
    """The textbook updates."""
    if name == "sgd":
        return [p - lr * g for p, g in zip(params, grads)], state
    if name == "momentum":
        v = [0.9 * v + g for v, g in zip(state[0], grads)]
        return [p - lr * v for p, v in zip(params, v)], (v,)
    m = [0.9 * m + 0.1 * g for m, g in zip(state[0], grads)]
    v = [0.999 * v + 0.001 * g * g for v, g in zip(state[1], grads)]
    wd = 0.01 if name == "adamw" else 0.0
    new = [p - lr * ((m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8) + wd * p)
           for p, m, v in zip(params, m, v)]
    return new, (m, v)


@pytest.mark.parametrize("state_layouts", [None, ZERO], ids=["param-layouts", "zero-1"])
@pytest.mark.parametrize("name", ["sgd", "momentum", "adam", "adamw"])
def test_three_steps_match_numpy(name, state_layouts):
    lr = 0.05
    opt = getattr(dtc.optim, name)(lr)
    rng = np.random.default_rng(0)
    w = [rng.standard_normal((16, 32)) * 0.3, rng.standard_normal((32, 16)) * 0.3]
    x, y = rng.standard_normal((8, 16)), rng.standard_normal((8, 16))
    params = tuple(dtc.copy_to_mesh(a, layout) for a, layout in zip(w, W))
    state = opt.init(params, layouts=state_layouts)
    fields = [k for k in ("velocity", "m", "v") if k in state]
    for k in fields:
        want = state_layouts or W
        assert [s.layout for s in state[k]] == list(want)
    state_in = tuple(s.layout for k in fields for s in state[k])
    has_step = "step" in state

    scalar = (SCALAR,) if has_step else ()

    @dtc.compile(in_layouts=W + state_in + scalar + (ROWS, ROWS),
                 out_layouts=W + state_in + scalar)
    def step(*args):
        w1, w2, *rest = args
        x, y = rest[-2:]
        flat = rest[:-2]
        st = {k: tuple(flat[2 * i:2 * i + 2]) for i, k in enumerate(fields)}
        if has_step:
            st["step"] = flat[-1]
        grads = dtc.grad(loss, argnums=(0, 1))(w1, w2, x, y)
        new, st = opt.update((w1, w2), grads, st)
        return (*new, *(s for k in fields for s in st[k]),
                *((st["step"],) if has_step else ()))

    ref_params, ref_state = list(w), tuple([np.zeros_like(p) for p in w] for _ in fields)
    args = [*params, *(s for k in fields for s in state[k]),
            *((state["step"],) if has_step else ())]
    for t in (1, 2, 3):
        grads = dtc.grad(loss, argnums=(0, 1))(*ref_params, x, y)
        ref_params, ref_state = reference(name, ref_params, [np.asarray(g) for g in grads],
                                          ref_state, t, lr)
        out = step(*args, x, y)
        out = out if isinstance(out, tuple) else (out,)
        args = list(out)
        for got, want in zip(out[:2], ref_params):
            np.testing.assert_allclose(np.asarray(got), want, rtol=1e-9, atol=1e-12)
    assert [a.layout for a in out[:2]] == list(W)
