"""Plan quality: the planner must find the known-optimal collectives of standard models."""

from __future__ import annotations

import numpy as np
import pytest
from models import block, softmax

import dtensor_compiler as dtc

U = dtc.UNSHARDED
B, S, D, H, F = 4, 16, 64, 8, 256


@pytest.fixture(scope="module")
def mesh():
    return dtc.create_mesh([("dp", 2), ("tp", 4)])


def spec(*shape):
    return dtc.TensorSpec(shape, np.float32)


def kinds(lowered):
    return [(c.kind, c.mesh_dims) for c in lowered.collectives()]





def block_layouts(mesh, x_layout):
    col = dtc.Layout([U, "tp"], mesh)
    row = dtc.Layout(["tp", U], mesh)
    rep = dtc.Layout([U], mesh)
    return (x_layout, rep, col, col, col, row, rep, col, row)


def block_specs():
    return (spec(B, S, D), spec(D), spec(D, D), spec(D, D), spec(D, D), spec(D, D), spec(D),
            spec(D, F), spec(F, D))


def test_megatron_mlp_needs_one_all_reduce(mesh):
    @dtc.compile(in_layouts=(dtc.Layout(["dp", U], mesh), dtc.Layout([U, "tp"], mesh),
                             dtc.Layout(["tp", U], mesh)),
                 out_layouts=dtc.Layout(["dp", U], mesh))
    def mlp(x, w1, w2):
        return np.tanh(x @ w1) @ w2

    low = mlp.lower(spec(512, 256), spec(256, 1024), spec(1024, 256))
    assert kinds(low) == [("all_reduce", ("tp",))]
    assert low.collectives()[0].bytes == 256 * 256 * 4
    assert low.comm_bytes() == 256 * 256 * 4
    assert "mlp" in low.collectives()[0].reason or "test_plan_quality.py" in \
        low.collectives()[0].reason


def test_transformer_block_needs_two_all_reduces(mesh):
    x_layout = dtc.Layout(["dp", U, U], mesh)
    f = dtc.compile(block, in_layouts=block_layouts(mesh, x_layout), out_layouts=x_layout)
    low = f.lower(*block_specs())
    assert kinds(low) == [("all_reduce", ("tp",)), ("all_reduce", ("tp",))]
    for c in low.collectives():
        assert c.bytes == (B // 2) * S * D * 4


def test_transformer_block_values(mesh):
    x_layout = dtc.Layout(["dp", U, U], mesh)
    f = dtc.compile(block, in_layouts=block_layouts(mesh, x_layout), out_layouts=x_layout)
    rng = np.random.default_rng(0)
    args = [rng.standard_normal(s.shape).astype(np.float32) * 0.2 for s in block_specs()]
    np.testing.assert_allclose(np.asarray(f(*args)), block(*args), rtol=2e-4, atol=2e-4)


def test_sequence_sharded_block_uses_reduce_scatters(mesh):
    seq = dtc.Layout(["dp", "tp", U], mesh)
    f = dtc.compile(block, in_layouts=block_layouts(mesh, seq), out_layouts=seq)
    low = f.lower(*block_specs())
    got = kinds(low)
    assert got.count(("reduce_scatter", ("tp",))) == 2, got
    assert not any(k == "all_reduce" for k, _ in got), got


def test_vocab_sharded_softmax_communicates_only_row_statistics():
    mesh = dtc.create_mesh([("tp", 4)])
    layout = dtc.Layout([U, "tp"], mesh)
    f = dtc.compile(softmax, in_layouts=(layout,), out_layouts=layout)
    low = f.lower(spec(8, 1024))
    cols = low.collectives()
    assert sorted(c.kind for c in cols) == ["all_reduce", "all_reduce"]
    assert {c.bytes for c in cols} == {8 * 1 * 4}
    assert "partial(tp:max)" in low.ir("propagate-layouts")


def test_reshape_splitting_a_sharded_dim_into_heads_is_free(mesh):
    x_layout = dtc.Layout(["dp", U, "tp"], mesh)
    out_layout = dtc.Layout(["dp", U, "tp", U], mesh)
    f = dtc.compile(lambda x: x.reshape(B, S, H, D // H), in_layouts=(x_layout,),
                    out_layouts=out_layout)
    low = f.lower(spec(B, S, D))
    assert low.collectives() == []
    x = np.arange(B * S * D, dtype=np.float32).reshape(B, S, D)
    np.testing.assert_array_equal(np.asarray(f(x)), x.reshape(B, S, H, D // H))


def _gelu(x, w):
    h = x @ w
    return 0.5 * h * (1 + np.tanh(0.79788456 * (h + 0.044715 * h ** 3)))


@pytest.mark.parametrize(("fn", "nbytes"), [
    (lambda x, w: (lambda s: (s, x - s / 16))(x.sum(1, keepdims=True)), 8 * 1 * 4),
    (_gelu, 8 * 8 * 4),
    (lambda x, w: (lambda h: np.exp(h) + np.exp(h * 2))(x @ w), 8 * 8 * 4),
], ids=["sum-and-centre", "gelu", "two-exps"])
def test_a_pending_sum_with_several_consumers_is_reduced_once(mesh, fn, nbytes) -> None:
    ins = (dtc.Layout([U, "tp"], mesh), dtc.Layout(["tp", U], mesh))
    low = dtc.compile(fn, in_layouts=ins).lower(spec(8, 16), spec(16, 8))
    (only,) = low.collectives()
    assert (only.kind, only.mesh_dims, only.bytes) == ("all_reduce", ("tp",), nbytes)
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((8, 16), np.float32), rng.standard_normal((16, 8), np.float32)
    got = low.run(x, w)
    for g, e in zip(got if isinstance(got, tuple) else (got,),
                    (lambda r: r if isinstance(r, tuple) else (r,))(fn(x, w))):
        np.testing.assert_allclose(np.asarray(g), e, rtol=1e-4, atol=1e-4)
