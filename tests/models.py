"""Numpy models shared by the planner tests (plain numpy: no dtensor_compiler here)."""

from __future__ import annotations

import numpy as np

HEADS = 8


def mlp(x, w1, w2):
    return np.tanh(x @ w1) @ w2


def layernorm(x, g):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-5) * g


def gelu(y):
    """GELU's tanh form."""
    return 0.5 * y * (1.0 + np.tanh(0.79788456 * (y + 0.044715 * y ** 3)))


def layernorm_gelu(x, g):
    """A layernorm (without bias) and a GELU, for the fusion tests."""
    mu = x.mean(axis=-1, keepdims=True)
    d = x - mu
    var = (d * d).mean(axis=-1, keepdims=True)
    return gelu(d / np.sqrt(var + 1e-5) * g)


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def block(x, g1, wq, wk, wv, wo, g2, w1, w2):
    """A pre-norm transformer block: attention with HEADS heads, then a tanh MLP."""
    b, s, d = x.shape
    hd = d // HEADS
    h = layernorm(x, g1)
    q = (h @ wq).reshape(b, s, HEADS, hd).transpose(0, 2, 1, 3)
    k = (h @ wk).reshape(b, s, HEADS, hd).transpose(0, 2, 1, 3)
    v = (h @ wv).reshape(b, s, HEADS, hd).transpose(0, 2, 1, 3)
    p = softmax(q @ k.transpose(0, 1, 3, 2) / hd**0.5)
    a = (p @ v).transpose(0, 2, 1, 3).reshape(b, s, d)
    x = x + a @ wo
    h = layernorm(x, g2)
    return x + np.tanh(h @ w1) @ w2
