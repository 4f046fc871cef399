"""Plan quality: the planner must find the known-optimal collectives of standard models."""

from __future__ import annotations

import numpy as np
import pytest
from models import block, layernorm, mlp, softmax

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


def test_a_sum_broadcast_back_is_all_reduced_not_gathered(mesh):
    # x {dp, -} times its column sums: one all_reduce of the [1, 32] sums, not an all_gather
    # of x followed by a reduce_scatter of the product (x is large: a small one is cheaper
    # to gather once, one ring pass against the all_reduce's two)
    layout = dtc.Layout(["dp", U], mesh)
    f = dtc.compile(_times_column_sums, in_layouts=(layout,), out_layouts=layout)
    low = f.lower(spec(32768, 32))
    assert [(c.kind, c.mesh_dims, c.bytes) for c in low.collectives()] == [
        ("all_reduce", ("dp",), 32 * 4)]
    x = np.random.default_rng(0).integers(-3, 4, (32768, 32)).astype(np.float32)  # exact sums
    np.testing.assert_array_equal(np.asarray(f(x)), _times_column_sums(x))


def _times_column_sums(x):
    return x * x.sum(axis=0, keepdims=True)


def test_vocab_sharded_softmax_communicates_only_row_statistics():
    mesh = dtc.create_mesh([("tp", 4)])
    layout = dtc.Layout([U, "tp"], mesh)
    f = dtc.compile(softmax, in_layouts=(layout,), out_layouts=layout)
    # a realistic vocabulary: for a small one, gathering the logits once costs less than two
    # all_reduces (four ring passes of latency), and the planner rightly does that instead
    low = f.lower(spec(256, 32768))
    cols = low.collectives()
    assert sorted(c.kind for c in cols) == ["all_reduce", "all_reduce"]
    assert {c.bytes for c in cols} == {256 * 1 * 4}
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
    # k is large enough that gathering x (or w) costs more than one all_reduce
    k = 1 << 18
    ins = (dtc.Layout([U, "tp"], mesh), dtc.Layout(["tp", U], mesh))
    low = dtc.compile(fn, in_layouts=ins).lower(spec(8, k), spec(k, 8))
    (only,) = low.collectives()
    assert (only.kind, only.mesh_dims, only.bytes) == ("all_reduce", ("tp",), nbytes)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, k), np.float32)
    w = rng.standard_normal((k, 8), np.float32) / np.float32(np.sqrt(k))
    got = low.run(x, w)
    for g, e in zip(got if isinstance(got, tuple) else (got,),
                    (lambda r: r if isinstance(r, tuple) else (r,))(fn(x, w))):
        np.testing.assert_allclose(np.asarray(g), e, rtol=1e-4, atol=1e-3)


# -- the chooser's picks are the cheapest realized plans --------------------------------------


def _cases():
    mesh = dtc.create_mesh([("dp", 2), ("tp", 4)])
    tp = dtc.create_mesh([("tp", 4)])
    dp_x = dtc.Layout(["dp", U, U], mesh)
    seq = dtc.Layout(["dp", "tp", U], mesh)
    col, row = dtc.Layout([U, "tp"], mesh), dtc.Layout(["tp", U], mesh)
    rows = dtc.Layout(["dp", U], mesh)
    return {
        "megatron-mlp": (mlp, (rows, col, row), rows, (spec(512, 256), spec(256, 1024),
                                                         spec(1024, 256))),
        "block": (block, block_layouts(mesh, dp_x), dp_x, block_specs()),
        "sequence-block": (block, block_layouts(mesh, seq), seq, block_specs()),
        "layernorm": (layernorm, (dtc.Layout(["dp", "tp"], mesh), dtc.Layout(["tp"], mesh)),
                      None, (spec(64, 256), spec(256))),
        "vocab-softmax": (softmax, (dtc.Layout([U, "tp"], tp),), dtc.Layout([U, "tp"], tp),
                          (spec(256, 32768),)),
        "small-softmax": (softmax, (dtc.Layout(["dp", "tp"], mesh),), None, (spec(16, 32),)),
        "column-sums": (_times_column_sums, (rows,), rows, (spec(96, 32),)),
        "gelu": (_gelu, (col, row), None, (spec(8, 16), spec(16, 8))),
    }


def _realized_seconds(fn, ins, out, specs):
    return sum(c.seconds for c in dtc.compile(fn, in_layouts=ins, out_layouts=out)
               .lower(*specs).collectives())


@pytest.mark.parametrize("name", list(_cases()))
def test_every_chosen_strategy_is_the_cheapest_realized_plan(name, monkeypatch) -> None:
    """Replace the strategy chosen for one op by each other candidate the chooser weighed,
    plan the rest as usual, and price the collectives of the whole result: none is cheaper
    than the plan the chooser made."""
    from dtensor_compiler.passes.propagate_layouts import _Propagation

    fn, ins, out, specs = _cases()[name]
    place = _Propagation._place
    weighed: dict[int, int] = {}
    forced: list[tuple[int, int]] = []

    def forcing_place(self, op, pinned, desired):
        index = next(i for i, o in enumerate(self.func.ops) if o is op)
        chooser = self.chooser

        def choose(space, op, operands, result, reduced=(), placed=None, layouts=None):
            options = chooser.alternatives(space, op, operands, result, reduced, placed,
                                           layouts)
            weighed[index] = len(options)
            pick = forced[0][1] if forced and forced[0][0] == index else 0
            return options[min(pick, len(options) - 1)]

        monkeypatch.setattr(chooser, "choose", choose)
        try:
            place(self, op, pinned, desired)
        finally:
            monkeypatch.delattr(chooser, "choose")

    monkeypatch.setattr(_Propagation, "_place", forcing_place)
    chosen = _realized_seconds(fn, ins, out, specs)
    assert weighed, "the program has ops with a factor rule"
    worse = []
    for index, count in sorted(weighed.items()):
        for pick in range(1, count):
            forced[:] = [(index, pick)]
            alternative = _realized_seconds(fn, ins, out, specs)
            if alternative < chosen * (1 - 1e-9):
                worse.append((index, pick, alternative))
    assert not worse, f"chosen plan costs {chosen:.3e} s; cheaper: {worse}"


def test_a_group_of_mesh_dims_moves_in_one_all_to_all(mesh):
    """{(dp,tp), -} -> {-, (dp,tp)} is one all_to_all over the flattened group, exactly the
    bytes of the same move on a 1-D mesh of 8 (moving dp and tp apart takes more)."""
    line = dtc.create_mesh([("all", 8)])
    x = np.arange(1024 * 1024, dtype=np.float32).reshape(1024, 1024)

    def lowered(m, group):
        f = dtc.compile(lambda x: x * 1.0, in_layouts=dtc.Layout([group, U], m),
                        out_layouts=dtc.Layout([U, group], m))
        return f, f.lower(spec(1024, 1024))

    f, low = lowered(mesh, ("dp", "tp"))
    _, flat = lowered(line, "all")
    assert kinds(low) == [("all_to_all", ("dp", "tp"))]
    assert kinds(flat) == [("all_to_all", ("all",))]
    assert low.comm_bytes() == flat.comm_bytes() == 1024 * 1024 * 4 // 8
    assert np.array_equal(np.asarray(f(x)), x)


@pytest.mark.parametrize(("shape", "layout", "new"), [
    ((8, 65536), ["dp", U], (1024, 512)),
    ((8, 64), [("dp", "tp"), U], (64, 8)),
    ((4, 6, 8), [U, "dp", U], (4, 12, 4)),
])
def test_a_reshape_of_block_contiguous_shards_moves_nothing(mesh, shape, layout, new):
    """Each shard of the sharded dim owns one contiguous block of the result's rows: the
    result keeps the mesh dims on the matching dim and nothing is communicated."""
    x = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    f = dtc.compile(lambda x: x.reshape(new), in_layouts=dtc.Layout(layout, mesh))
    assert kinds(f.lower(spec(*shape))) == []
    out = f(x)
    assert dtc.fetch_layout(out).sharding_specs == layout
    assert np.array_equal(np.asarray(out), x.reshape(new))


def test_argmax_over_a_sharded_axis_exchanges_only_result_sized_pairs(mesh):
    """The local extremes, then the first local indices holding the global extreme: two
    all_reduces of the [8] result, never the logits; numpy's first-index tie-break and its
    first NaN."""
    x = np.random.default_rng(0).integers(0, 5, (8, 262144)).astype(np.float32)
    x[3, [100, 200000]] = np.nan
    f = dtc.compile(lambda x: (np.argmax(x, axis=1), np.argmin(x, axis=-1, keepdims=True)),
                    in_layouts=dtc.Layout([U, "tp"], mesh))
    low = f.lower(spec(8, 262144))
    assert sorted((c.kind, c.mesh_dims, c.bytes) for c in low.collectives()) == [
        ("all_reduce", ("tp",), 8 * 4)] * 2 + [("all_reduce", ("tp",), 8 * 8)] * 2
    got_max, got_min = (np.asarray(r) for r in f(x))
    assert got_max.dtype == np.argmax(x, 1).dtype
    assert np.array_equal(got_max, np.argmax(x, axis=1))
    assert np.array_equal(got_min, np.argmin(x, axis=-1, keepdims=True))


def test_vocabulary_parallel_embedding_is_a_masked_lookup_and_one_all_reduce(mesh):
    """np.take and table[ids] of a {tp, -} table: each device looks up the ids in its block
    of rows, and the [batch, seq, hidden] result is all-reduced once; the 256 MiB table is
    never gathered."""
    for fn in (lambda t, i: np.take(t, i, axis=0), lambda t, i: t[i]):
        f = dtc.compile(fn, in_layouts=(dtc.Layout(["tp", U], mesh), dtc.Layout(["dp", U], mesh)),
                        out_layouts=dtc.Layout(["dp", U, U], mesh))
        low = f.lower(spec(65536, 1024), dtc.TensorSpec((8, 128), np.int64))
        assert [(c.kind, c.mesh_dims, c.bytes) for c in low.collectives()] == [
            ("all_reduce", ("tp",), 4 * 128 * 1024 * 4)]


@pytest.mark.parametrize("dtype", [np.float32, np.int32])
def test_a_masked_lookup_gives_every_value_exactly(mesh, dtype):
    """Kept pending, the lookup's summands are the row on its owner and the additive identity
    elsewhere: NaNs, infinities and ints come back exactly, indices on every block."""
    table = np.arange(16 * 3, dtype=dtype).reshape(16, 3) - 20
    if dtype == np.float32:
        table[5] = [-0.0, np.nan, -np.inf]
    ids = np.array([[0, 5, 15], [4, 8, 5]])
    f = dtc.compile(lambda t, i: t[i], in_layouts=(dtc.Layout(["tp", U], mesh),
                                                   dtc.Layout([U, U], mesh)),
                    out_layouts=dtc.Layout([U, U, U], mesh, partial={"tp": "sum"}))
    assert kinds(f.lower(dtc.TensorSpec((16, 3), dtype), dtc.TensorSpec((2, 3), np.int64))) == []
    got = np.asarray(f(table, ids))
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, table[ids])


@pytest.mark.parametrize(("shape", "layout", "fn", "expected"), [
    ((4096, 65536), [U, "tp"], lambda a: a[:, 3], [("all_reduce", ("tp",), 4096 * 4)]),
    ((4096, 1024), ["dp", U], lambda a: a[3], [("all_reduce", ("dp",), 1024 * 4)]),
])
def test_indexing_a_sharded_dim_is_done_by_the_owner(mesh, shape, layout, fn, expected):
    """An int index on a sharded dim: the owner of the element gives it, the others the
    additive identity, and the result is reduced at its own size (1 GiB is never gathered)."""
    f = dtc.compile(fn, in_layouts=dtc.Layout(layout, mesh))
    assert [(c.kind, c.mesh_dims, c.bytes) for c in f.lower(spec(*shape)).collectives()] == \
        expected
    small = dtc.compile(fn, in_layouts=dtc.Layout(layout, mesh),
                        out_layouts=dtc.Layout([U], mesh, partial={layout[0] if layout[0] != U
                                                                   else layout[1]: "sum"}))
    x = np.random.default_rng(1).standard_normal((16, 24)).astype(np.float32)
    assert np.array_equal(np.asarray(small(x)), fn(x))


def test_a_masked_lookup_wraps_negative_ids_and_refuses_ids_out_of_range(mesh):
    table = np.arange(48, dtype=np.float32).reshape(16, 3)
    f = dtc.compile(lambda t, i: t[i], in_layouts=(dtc.Layout(["tp", U], mesh),
                                                   dtc.Layout([U], mesh)),
                    out_layouts=dtc.Layout([U, U], mesh, partial={"tp": "sum"}))
    ids = np.array([-1, -16, 3])
    assert np.array_equal(np.asarray(f(table, ids)), table[ids])
    with pytest.raises(IndexError, match="index 16 is out of bounds for axis 0 with size 16"):
        f(table, np.array([16]))
