"""An L-layer transformer forward pass in plain numpy, tensor-parallel on a dp×tp mesh.

Run: ``python examples/transformer.py`` compiles a 2-layer model on the simulated 2×4 mesh,
prints its collectives and checks the result against numpy.
"""

from __future__ import annotations

import numpy as np

import dtensor_compiler as dtc

U = dtc.UNSHARDED
LAYER_PARAMS = ("g1", "wq", "wk", "wv", "wo", "g2", "w1", "w2")


def layernorm(x, g):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-5) * g


def softmax(x):
    # The max only keeps exp in range: softmax does not depend on it, so its derivative
    # is zero and not worth computing (jax.nn.softmax does the same).
    e = np.exp(x - dtc.stop_gradient(x.max(-1, keepdims=True)))
    return e / e.sum(-1, keepdims=True)


def block(x, g1, wq, wk, wv, wo, g2, w1, w2, heads):
    b, s, d = x.shape
    hd = d // heads
    h = layernorm(x, g1)
    q = (h @ wq).reshape(b, s, heads, hd).transpose(0, 2, 1, 3)
    k = (h @ wk).reshape(b, s, heads, hd).transpose(0, 2, 1, 3)
    v = (h @ wv).reshape(b, s, heads, hd).transpose(0, 2, 1, 3)
    p = softmax(q @ k.transpose(0, 1, 3, 2) / hd**0.5)
    a = (p @ v).transpose(0, 2, 1, 3).reshape(b, s, d)
    x = x + a @ wo
    h = layernorm(x, g2)
    return x + np.tanh(h @ w1) @ w2


def make_forward(layers: int, heads: int):
    """A forward function taking x and 8 parameters per layer."""

    def forward(x, *params):
        for i in range(layers):
            x = block(x, *params[8 * i: 8 * i + 8], heads=heads)
        return x

    return forward


def layouts(mesh: dtc.Mesh, layers: int, x_layout: dtc.Layout | None = None):
    """Megatron tensor parallelism: column-parallel qkv/w1, row-parallel wo/w2."""
    col, row = dtc.Layout([U, "tp"], mesh), dtc.Layout(["tp", U], mesh)
    rep = dtc.Layout([U], mesh)
    x_layout = x_layout or dtc.Layout(["dp", U, U], mesh)
    per_layer = (rep, col, col, col, row, rep, col, row)
    return (x_layout,) + per_layer * layers, x_layout


def specs(batch: int, seq: int, dim: int, hidden: int, layers: int):
    f32 = np.float32
    per_layer = (dtc.TensorSpec((dim,), f32),) + (dtc.TensorSpec((dim, dim), f32),) * 4 + (
        dtc.TensorSpec((dim,), f32), dtc.TensorSpec((dim, hidden), f32),
        dtc.TensorSpec((hidden, dim), f32))
    return (dtc.TensorSpec((batch, seq, dim), f32),) + per_layer * layers


def main() -> None:
    layers, batch, seq, dim, heads = 2, 8, 32, 128, 8
    mesh = dtc.create_mesh([("dp", 2), ("tp", 4)])
    in_layouts, out_layout = layouts(mesh, layers)
    forward = dtc.compile(make_forward(layers, heads), in_layouts=in_layouts,
                          out_layouts=out_layout)
    arg_specs = specs(batch, seq, dim, 4 * dim, layers)
    rng = np.random.default_rng(0)
    args = [(rng.standard_normal(s.shape) * 0.1).astype(np.float32) for s in arg_specs]
    low = forward.lower(*arg_specs)
    for c in low.collectives():
        print(f"{c.kind:<15} {','.join(c.mesh_dims):<6} {c.bytes:>10} B  {c.reason}")
    got = np.asarray(forward(*args))
    np.testing.assert_allclose(got, make_forward(layers, heads)(*args), rtol=1e-3, atol=1e-3)
    print(f"{layers}-layer transformer on {mesh.mesh_shape().text()}: matches numpy")


if __name__ == "__main__":
    main()
