"""Donation (`donate_argnums`): a compiled step writes its results into the buffers of the
arguments it is given, never into a buffer anything else still shows, and a donated DTensor
is unusable afterwards."""

from __future__ import annotations

import numpy as np
import pytest

import dtensor_compiler as dtc

U = dtc.UNSHARDED
MESH = dtc.create_mesh([("dp", 2), ("tp", 4)])
W = (dtc.Layout([U, "tp"], MESH), dtc.Layout(["tp", U], MESH))
ROWS = dtc.Layout(["dp", U], MESH)
X = dtc.Layout(["dp"], MESH)


def loss(w1, w2, x, y):
    return np.mean((np.tanh(x @ w1) @ w2 - y) ** 2)


def sgd(w1, w2, x, y):
    g1, g2 = dtc.grad(loss, argnums=(0, 1))(w1, w2, x, y)
    return w1 - 0.1 * g1, w2 - 0.1 * g2


def buffer(t: dtc.DTensor) -> int:
    """The address of a DTensor's stacked array (without holding a reference to it)."""
    return t.storage.stacked.__array_interface__["data"][0]


def test_a_training_step_updates_donated_variables_in_place():
    plain = dtc.compile(sgd, in_layouts=W + (ROWS, ROWS), out_layouts=W)
    donating = dtc.compile(sgd, in_layouts=W + (ROWS, ROWS), out_layouts=W,
                           donate_argnums=(0, 1))
    rng = np.random.default_rng(0)
    w1, w2 = rng.standard_normal((16, 32)), rng.standard_normal((32, 16))
    x, y = rng.standard_normal((8, 16)), rng.standard_normal((8, 16))
    ref = (dtc.copy_to_mesh(w1, W[0]), dtc.copy_to_mesh(w2, W[1]))
    params = (dtc.DVariable(w1, W[0]), dtc.DVariable(w2, W[1]))
    for _ in range(3):
        ref = plain(*ref, x, y)
        before = [buffer(p.read_value()) for p in params]
        new = donating(*params, x, y)
        assert [buffer(t) for t in new] == before  # written where the old values were
        with pytest.raises(dtc.DonatedError, match="donated to @sgd"):
            params[0].read_value().numpy()
        for p, t, r in zip(params, new, ref):
            p.assign(t)
            np.testing.assert_array_equal(np.asarray(p.read_value()), np.asarray(r))


def test_a_buffer_something_else_shows_is_not_written():
    """The last reader of a donated argument writes into it only if no other storage, no
    other argument and no later value can see that buffer; the results are right either way
    and the donated DTensor is given up either way."""
    double = dtc.compile(lambda a: a * 2, in_layouts=(X,), donate_argnums=0)
    same = dtc.compile(lambda a: a, in_layouts=(X,))
    t = dtc.copy_to_mesh(np.ones(8), X)
    where = buffer(t)
    assert buffer(double(t)) == where
    assert t.is_donated
    t = dtc.copy_to_mesh(np.ones(8), X)
    u = same(t)  # u's storage shows t's array
    out = double(t)
    np.testing.assert_array_equal(u.numpy(), np.ones(8))
    np.testing.assert_array_equal(out.numpy(), 2 * np.ones(8))
    t = dtc.copy_to_mesh(np.ones(8), X)
    twice = dtc.compile(lambda a, b: a * 2 + b, in_layouts=(X, X), donate_argnums=0)
    np.testing.assert_array_equal(twice(t, t).numpy(), 3 * np.ones(8))
    t = dtc.copy_to_mesh(np.ones(8), X)
    alias = dtc.relayout(t, X)
    assert alias is t  # one DTensor per storage: donating it gives up every name of it
    a = np.ones(8)
    np.testing.assert_array_equal(double(a).numpy(), 2 * np.ones(8))
    np.testing.assert_array_equal(a, np.ones(8))  # a numpy argument is copied, never written


def test_a_later_view_of_the_argument_keeps_it_from_being_written():
    """``a * 2`` is a's last reader, but a reshape of a (a view), made before it, is read
    after it: writing into a would change what the reshape shows."""
    def f(a):
        rows = a.reshape(2, 4)
        doubled = a * 2
        return doubled, rows + 1

    f = dtc.compile(f, in_layouts=(X,), donate_argnums=0)
    t = dtc.copy_to_mesh(np.arange(8.0), X)
    doubled, shifted = f(t)
    np.testing.assert_array_equal(doubled.numpy(), 2 * np.arange(8.0))
    np.testing.assert_array_equal(shifted.numpy(), np.arange(8.0).reshape(2, 4) + 1)


def test_donation_errors():
    with pytest.raises(TypeError, match="donate_argnums must be argument positions"):
        dtc.compile(lambda a: a, donate_argnums=(-1,))
    f = dtc.compile(lambda a, b: a * b, donate_argnums=(1,))
    with pytest.raises(dtc.TraceError, match="is a Python number, which cannot be donated"):
        f(np.ones(3), 2.0)
    g = dtc.compile(lambda a: a, donate_argnums=(1,))
    with pytest.raises(dtc.TraceError, match="donate_argnums 1 is out of range for 1"):
        g(np.ones(3))
    t = dtc.copy_to_mesh(np.ones(8), X)
    dtc.compile(lambda a: a + 1, in_layouts=(X,), donate_argnums=0)(t)
    assert repr(t) == "DTensor(donated, shape=(8,), dtype=float64)"
    with pytest.raises(dtc.DonatedError):
        dtc.unpack(t)


def test_adam_updates_parameters_and_state_in_place():
    """Every donated buffer (parameters, both moments, the step count) ends up holding its
    new value: the moment updates chain through temporaries, each written where the one
    before it died. Bit-equal to the same step without donation."""
    scalar = dtc.Layout([], MESH)
    opt = dtc.optim.adam(1e-2)

    def step(w1, w2, m1, m2, v1, v2, t, x, y):
        grads = dtc.grad(loss, argnums=(0, 1))(w1, w2, x, y)
        new, st = opt.update((w1, w2), grads, {"m": (m1, m2), "v": (v1, v2), "step": t})
        return (*new, *st["m"], *st["v"], st["step"])

    layouts = W * 3 + (scalar, ROWS, ROWS)
    plain = dtc.compile(step, in_layouts=layouts, out_layouts=W * 3 + (scalar,))
    donating = dtc.compile(step, in_layouts=layouts, out_layouts=W * 3 + (scalar,),
                           donate_argnums=tuple(range(7)))
    rng = np.random.default_rng(1)
    w = [rng.standard_normal((16, 32)), rng.standard_normal((32, 16))]
    x, y = rng.standard_normal((8, 16)), rng.standard_normal((8, 16))

    def fresh():
        return ([dtc.copy_to_mesh(a, lay) for a, lay in zip(w, W)]
                + [dtc.copy_to_mesh(np.zeros(a.shape), lay) for a, lay in zip(w + w, W + W)]
                + [dtc.copy_to_mesh(np.zeros((), np.int64), scalar)])

    state, ref = fresh(), fresh()
    for _ in range(3):
        ref = plain(*ref, x, y)
        before = [buffer(s) for s in state]
        state = donating(*state, x, y)
        assert [buffer(s) for s in state] == before
        for got, want in zip(state, ref):
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
