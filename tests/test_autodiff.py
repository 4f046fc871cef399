"""Reverse-mode derivatives: every VJP rule against central finite differences in float64, the
API's structure and errors, and derivatives of sharded programs planned with the forward.

Each case differentiates ``sum(f(*xs) * weights)`` (random weights, so every element of the
result matters) at a random point inside the function's domain.
"""

from __future__ import annotations

import inspect
import re

import numpy as np
import pytest

import dtensor_compiler as dtc

U = dtc.UNSHARDED
RNG = np.random.default_rng(0)


def numeric_grad(f, args, i, eps=1e-6):
    """Central differences of scalar `f` with respect to argument `i`."""
    args = [np.array(a, dtype=np.float64) for a in args]
    out = np.zeros_like(args[i])
    for idx in np.ndindex(args[i].shape):
        up = [a.copy() for a in args]
        down = [a.copy() for a in args]
        up[i][idx] += eps
        down[i][idx] -= eps
        out[idx] = (f(*up) - f(*down)) / (2 * eps)
    return out


def weighted(f, shape_of_result):
    w = RNG.standard_normal(shape_of_result)
    return lambda *xs: np.sum(f(*xs) * w)


def check(f, *args, rtol=1e-6, atol=1e-7):
    args = [np.asarray(a, dtype=np.float64) for a in args]
    loss = weighted(f, np.shape(f(*args)))
    grads = dtc.grad(loss, argnums=tuple(range(len(args))))(*args)
    for i, g in enumerate(grads):
        np.testing.assert_allclose(np.asarray(g), numeric_grad(loss, args, i), rtol=rtol,
                                   atol=atol, err_msg=f"argument {i}")


def uniform(lo, hi, shape=(3, 4)):
    return RNG.uniform(lo, hi, shape)


UNARY = {
    "exp": (-1, 1), "exp2": (-1, 1), "expm1": (-1, 1), "log": (0.5, 2), "log2": (0.5, 2),
    "log10": (0.5, 2), "log1p": (0, 1), "tanh": (-2, 2), "sinh": (-1, 1), "cosh": (-1, 1),
    "sin": (-3, 3), "cos": (-3, 3), "tan": (-1, 1), "arcsin": (-0.8, 0.8),
    "arccos": (-0.8, 0.8), "arctan": (-2, 2), "arcsinh": (-2, 2), "arccosh": (1.5, 3),
    "arctanh": (-0.8, 0.8), "sqrt": (0.5, 2), "cbrt": (0.5, 2), "square": (-2, 2),
    "reciprocal": (0.5, 2), "absolute": (0.5, 2), "fabs": (0.5, 2), "negative": (-1, 1),
    "positive": (-1, 1), "deg2rad": (-9, 9), "rad2deg": (-1, 1),
}


@pytest.mark.parametrize("name", sorted(UNARY))
def test_unary_ufuncs(name):
    lo, hi = UNARY[name]
    x = uniform(lo, hi)
    if name in ("absolute", "fabs"):
        x = x * np.where(RNG.random(x.shape) < 0.5, -1, 1)
    check(getattr(np, name), x)


BINARY = {
    "add": ((-1, 1), (-1, 1)), "subtract": ((-1, 1), (-1, 1)), "multiply": ((-1, 1), (-1, 1)),
    "divide": ((-1, 1), (0.5, 2)), "power": ((0.5, 2), (-1, 2)),
    "float_power": ((0.5, 2), (-1, 2)), "hypot": ((0.5, 2), (0.5, 2)),
    "arctan2": ((0.5, 2), (-2, 2)), "logaddexp": ((-1, 1), (-1, 1)),
    "logaddexp2": ((-1, 1), (-1, 1)), "remainder": ((3.1, 3.9), (1.1, 1.4)),
    "fmod": ((3.1, 3.9), (1.1, 1.4)), "maximum": ((-1, 0), (0.1, 1)),
    "minimum": ((-1, 0), (0.1, 1)), "fmax": ((0.1, 1), (-1, 0)), "fmin": ((0.1, 1), (-1, 0)),
}


@pytest.mark.parametrize("name", sorted(BINARY))
def test_binary_ufuncs(name):
    (a, b), (c, d) = BINARY[name]
    check(getattr(np, name), uniform(a, b), uniform(c, d))


def test_broadcasting_sums_the_cotangent_back():
    check(lambda x, y: x * y + y, uniform(-1, 1, (3, 1)), uniform(-1, 1, (4,)))
    check(lambda x, y: np.maximum(x, 0.3 * y), uniform(-1, 1, (2, 3, 4)), uniform(-1, 1, (3, 1)))


def test_copysign_passes_the_sign_on():
    check(np.copysign, uniform(0.5, 1) * np.where(RNG.random((3, 4)) < 0.5, -1, 1),
          uniform(-1, 1))


@pytest.mark.parametrize("fn", [
    lambda a, b: a @ b,
    lambda a, b: np.matmul(a[None], b),
    lambda a, b: a[0] @ b,
    lambda a, b: a @ b[:, 0],
    lambda a, b: np.einsum("ij,jk->ik", a, b),
    lambda a, b: np.einsum("ij,jk->k", a, b),
    lambda a, b: np.einsum("ij,jk->ikj", a, b),
    lambda a, b: np.tensordot(a, b, axes=1),
], ids=["matmul", "batched", "vector-matrix", "matrix-vector", "einsum", "einsum-summed",
        "einsum-outer", "tensordot"])
def test_contractions(fn):
    check(fn, uniform(-1, 1, (3, 4)), uniform(-1, 1, (4, 5)))


@pytest.mark.parametrize("shapes", [((3, 1, 4, 5), (2, 5, 6)), ((5,), (2, 5, 6)),
                                    ((2, 3, 5), (5,)), ((1,) * 11 + (2, 3), (3, 2))],
                         ids=["broadcast-batch", "vector-left", "vector-right", "11-batch-dims"])
def test_matmul_broadcasting(shapes):
    a, b = shapes
    check(np.matmul, uniform(-1, 1, a), uniform(-1, 1, b))


@pytest.mark.parametrize("fn", [
    lambda x: x.sum(axis=1),
    lambda x: x.sum(axis=(0, 2), keepdims=True),
    lambda x: x.mean(axis=0),
    lambda x: x.max(axis=1),
    lambda x: x.min(axis=(0, 1)),
    lambda x: x.var(axis=2),
    lambda x: np.exp(x - x.max(axis=2, keepdims=True))
    / np.exp(x - x.max(axis=2, keepdims=True)).sum(axis=2, keepdims=True),
    lambda x: np.cumsum(x, axis=1),
    lambda x: np.clip(x, -0.5, 0.5),
    lambda x: np.where(x > 0, x, 0.1 * x),
], ids=["sum", "sum-keepdims", "mean", "max", "min", "var", "softmax", "cumsum", "clip",
        "where"])
def test_reductions_and_selections(fn):
    check(fn, uniform(-1, 1, (2, 3, 4)))


def _with_zeros(shape, count):
    """Uniform values in [-1, 1] with `count` exact zeros at random places."""
    x = uniform(-1, 1, shape)
    x.flat[RNG.choice(x.size, count, replace=False)] = 0.0
    return x


@pytest.mark.parametrize("fn", [
    lambda x: np.prod(x, axis=1),
    lambda x: np.prod(x, axis=(0, 2), keepdims=True),
    lambda x: np.prod(x),
    lambda x: np.cumprod(x, axis=1),
    lambda x: np.cumprod(x, axis=2),
    lambda x: np.sort(x, axis=1),
    lambda x: np.sort(x, axis=0, kind="stable"),
    lambda x: np.ldexp(x, np.array([[[-1, 0, 2, 3]]])),
], ids=["prod", "prod-keepdims", "prod-all", "cumprod", "cumprod-last", "sort", "sort-stable",
        "ldexp"])
def test_products_sorts_and_ldexp(fn):
    check(fn, uniform(-1, 1, (2, 3, 4)))


@pytest.mark.parametrize("zeros", [1, 2, 5])
@pytest.mark.parametrize("fn", [lambda x: np.prod(x, axis=1), lambda x: np.cumprod(x, axis=1)],
                         ids=["prod", "cumprod"])
def test_products_are_exact_at_zeros(fn, zeros):
    """Where an operand is zero the products' rules cannot divide by it: one zero in a row
    gets the product of the others, two zeros make every derivative in the row zero (the
    function is polynomial, so central differences are exact up to rounding)."""
    check(fn, _with_zeros((3, 4, 2), zeros))


def test_astype_casts_the_cotangent_back():
    """Finite differences cannot see through a float32 round trip; the rule is exact."""
    x, w = uniform(-1, 1), uniform(-1, 1)
    g = dtc.grad(lambda x: np.sum(x.astype(np.float32) * w.astype(np.float32)))(x)
    assert np.asarray(g).dtype == np.float64
    np.testing.assert_array_equal(np.asarray(g), w.astype(np.float32).astype(np.float64))


def test_max_gives_the_whole_cotangent_to_the_first_extreme_as_argmax_picks():
    x = np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 0.0]])
    g = dtc.grad(lambda x: np.sum(x.max(axis=1) * np.array([1.0, 10.0])))(x)
    np.testing.assert_array_equal(np.asarray(g), [[0, 1, 0], [10, 0, 0]])
    g = dtc.grad(lambda x: x.min())(x)
    np.testing.assert_array_equal(np.asarray(g), [[0, 0, 0], [0, 0, 1]])


def test_max_gives_the_cotangent_to_the_first_nan_and_works_sharded():
    x = np.array([[1.0, np.nan, 3.0, np.nan], [2.0, 5.0, 5.0, 0.0]])
    g = dtc.grad(lambda x: np.sum(x.max(axis=1) * np.array([1.0, 10.0])))(x)
    np.testing.assert_array_equal(np.asarray(g), [[0, 1, 0, 0], [0, 10, 0, 0]])
    mesh = dtc.create_mesh([("x", 2), ("y", 2)])
    cols = dtc.Layout([U, ("x", "y")], mesh)  # the reduced axis split over all 4 devices
    step = dtc.compile(dtc.grad(lambda x: np.sum(x.max(axis=1) * np.array([1.0, 10.0]))),
                       in_layouts=(cols,))
    np.testing.assert_array_equal(np.asarray(step(x)), np.asarray(g))
    # the first extreme is found from a [rows, 1] statistic, not by gathering the rows
    assert all(c.bytes <= 2 * 8 for c in step.lower(x).collectives())


@pytest.mark.parametrize("fn", [
    lambda x: x.reshape(4, 6),
    lambda x: x.transpose(2, 0, 1),
    lambda x: np.broadcast_to(x[:, :1], (2, 3, 4)),
    lambda x: np.concatenate([x, 2 * x[:, :1]], axis=1),
    lambda x: np.flip(x, axis=(0, 2)),
    lambda x: x[:, 1:, ::2],
    lambda x: x[::-1, ::3, 1:3],
    lambda x: np.take(x, np.array([2, 0, 2, 1]), axis=1),
    lambda x: x[:, np.array([[0, 0], [2, 1]])],
    lambda x: np.pad(x, ((1, 0), (0, 2), (0, 0))),
], ids=["reshape", "transpose", "broadcast", "concatenate", "flip", "slice", "strided",
        "take-repeated", "take-2d", "pad"])
def test_shape_and_indexing_ops(fn):
    check(fn, uniform(-1, 1, (2, 3, 4)))


def test_value_and_grad_with_aux_and_argnums():
    x, y = uniform(-1, 1), uniform(-1, 1)

    def f(x, y):
        return np.sum(x * y), x + y

    (value, aux), (gx, gy) = dtc.value_and_grad(f, argnums=(0, 1), has_aux=True)(x, y)
    assert np.asarray(value) == pytest.approx(np.sum(x * y))
    np.testing.assert_allclose(np.asarray(aux), x + y)
    np.testing.assert_allclose(np.asarray(gx), y)
    np.testing.assert_allclose(np.asarray(gy), x)
    g, aux = dtc.grad(f, argnums=1, has_aux=True)(x, y)
    np.testing.assert_allclose(np.asarray(g), x)
    np.testing.assert_allclose(dtc.grad(lambda x, y: np.sum(x * y), argnums=-1)(x, y), x)


def test_argnums_as_jax_takes_them():
    """A position given twice gets its gradient twice; numpy integers count as ints;
    keyword arguments inside a compiled function are passed on, not differentiated."""
    x = uniform(-1, 1, (3,))
    first, second = dtc.grad(lambda a: np.sum(a ** 2), argnums=(0, 0))(x)
    np.testing.assert_allclose(np.asarray(first), 2 * x)
    np.testing.assert_allclose(np.asarray(second), 2 * x)
    inside = dtc.compile(lambda a: dtc.grad(lambda b: np.sum(b ** 2), argnums=(0, 0))(a))(x)
    np.testing.assert_allclose(np.asarray(inside[0]), 2 * x)
    np.testing.assert_allclose(np.asarray(dtc.grad(np.sum, argnums=np.int64(0))(x)), 1.0)
    scaled = dtc.compile(lambda a: dtc.grad(lambda b, s: np.sum(b) * s)(a, s=3.0))(x)
    np.testing.assert_allclose(np.asarray(scaled), 3.0)


def test_aux_may_hold_none_and_a_compiled_function_may_be_differentiated():
    x = uniform(-1, 1, (3,))
    g, aux = dtc.grad(lambda a: (np.sum(a * a), None), has_aux=True)(x)
    assert aux is None
    np.testing.assert_allclose(np.asarray(g), 2 * x)
    g, aux = dtc.grad(lambda a: (np.sum(a * a), {"m": np.mean(a), "none": None}),
                      has_aux=True)(x)
    assert aux["none"] is None and np.asarray(aux["m"]) == pytest.approx(np.mean(x))
    squares = dtc.compile(lambda a: np.sum(a ** 2))
    np.testing.assert_allclose(np.asarray(dtc.grad(squares)(x)), 2 * x)
    twice = dtc.compile(lambda a: squares(a) * 2)  # traced into the caller's program
    assert np.asarray(twice(x)) == pytest.approx(2 * np.sum(x ** 2))


def test_derivatives_where_the_formula_is_nan_but_the_function_is_not():
    """``x**y`` at ``x == 0`` (in y: 0; in x with ``y == 0``: 0), ``logaddexp`` at -inf
    (a masked position: 0), ``fmax``/``fmin`` with a NaN (the operand returned gets it)."""
    x, p = np.array([0.0, 0.0, 2.0]), np.array([2.0, 0.0, 2.0])
    gx, gp = dtc.grad(lambda x, p: np.sum(x ** p), argnums=(0, 1))(x, p)
    np.testing.assert_allclose(np.asarray(gx), [0.0, 0.0, 4.0])
    np.testing.assert_allclose(np.asarray(gp), [0.0, 0.0, 4 * np.log(2.0)])
    a = np.array([0.3, -np.inf, 1.0])
    b = np.array([-0.2, -np.inf, -np.inf])
    ga, gb = dtc.grad(lambda a, b: np.sum(np.logaddexp(a, b)), argnums=(0, 1))(a, b)
    np.testing.assert_allclose(np.asarray(ga), [1 / (1 + np.exp(-0.5)), 0.0, 1.0])
    np.testing.assert_allclose(np.asarray(gb), [1 / (1 + np.exp(0.5)), 0.0, 0.0])
    a, b = np.array([1.0, np.nan, 3.0]), np.array([np.nan, 2.0, 1.0])
    for fn, picks_a in ((np.fmax, [1.0, 0.0, 1.0]), (np.fmin, [1.0, 0.0, 0.0])):
        ga, gb = dtc.grad(lambda a, b, fn=fn: np.sum(fn(a, b)), argnums=(0, 1))(a, b)
        np.testing.assert_array_equal(np.asarray(ga), picks_a)
        np.testing.assert_array_equal(np.asarray(gb), 1.0 - np.asarray(picks_a))


def test_stop_gradient_blocks_the_derivative():
    x = uniform(-1, 1)
    g = dtc.grad(lambda x: np.sum(x * dtc.stop_gradient(x)))(x)
    np.testing.assert_allclose(np.asarray(g), x)
    assert dtc.stop_gradient(x) is x


def test_an_input_nothing_depends_on_gets_zeros_and_no_work():
    mesh = dtc.create_mesh([("x", 4)])
    rows = dtc.Layout(["x", U], mesh)

    @dtc.compile(in_layouts=(rows, rows))
    def step(a, b):
        return dtc.grad(lambda a, b: np.sum(a * a), argnums=(0, 1))(a, b)

    a, b = uniform(-1, 1, (8, 3)), uniform(-1, 1, (8, 3))
    ga, gb = step(a, b)
    np.testing.assert_allclose(np.asarray(ga), 2 * a)
    np.testing.assert_array_equal(np.asarray(gb), np.zeros_like(b))
    assert step.lower(a, b).collectives() == []


def _layernorm_softmax(x, g):
    centred = x - np.mean(x, axis=-1, keepdims=True)
    normed = centred / np.sqrt(np.mean(centred ** 2, axis=-1, keepdims=True) + 1e-5) * g
    e = np.exp(normed - np.max(normed, axis=-1, keepdims=True))
    return np.sum(e / np.sum(e, axis=-1, keepdims=True) * x)


def test_the_backward_pass_carries_negations():
    """Subtractions and divisions give negated cotangents; the backward pass carries the
    sign (rules are linear in the cotangent) until it meets another cotangent of the same
    value, where the sum becomes a subtraction, so no ``negative`` is emitted. A broadcast
    cotangent is added without its ``broadcast_to``; a gradient summed over leading dims
    takes no reshape."""
    x, g = uniform(-1, 1, (6, 5)), uniform(0.5, 2, (5,))
    f = dtc.compile(dtc.grad(_layernorm_softmax, argnums=(0, 1)))
    low = f.lower(x, g)
    assert " = negative " not in low.ir("trace")  # (not emitted and removed: never emitted)
    ops = [line.split(" = ")[1].split(" ")[0] for line in low.ir("simplify").splitlines()
           if " = " in line]
    counts = {name: ops.count(name) for name in set(ops)}
    assert "negative" not in counts
    assert counts["broadcast_to"] == 1  # (the variance's mean's: a rule takes it, not a sum)
    assert "reshape" not in counts
    check(lambda x, g: np.stack([_layernorm_softmax(x, g)]), x, g)


def test_a_denominators_gradient_does_not_overflow_where_the_quotients_would():
    """``d(x / y)/dy = -(g * out) / y``: with g / y past the dtype's range (fp16: 1000 /
    0.01) but out small, forming g / y first would give inf * 0 = nan."""
    c = np.array([0.0, 1e-3, 0.5], np.float16)
    w = np.array([1000.0, 1000.0, 1.0], np.float16)
    y = np.full(3, 0.01, np.float16)
    got = np.asarray(dtc.grad(lambda y: np.sum(c / y * w))(y))
    want = -(w.astype(np.float64) * c) / y.astype(np.float64) ** 2
    np.testing.assert_allclose(got.astype(np.float64), want, rtol=2e-3)


def _layernorm_twice(x, g):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return np.sum((x - mu) / np.sqrt(var + 1e-5) * g)


def _layernorm_once(x, g):
    mu = x.mean(-1, keepdims=True)
    d = x - mu
    var = (d ** 2).mean(-1, keepdims=True)
    return np.sum(d / np.sqrt(var + 1e-5) * g)


def test_a_subexpression_written_twice_is_differentiated_once():
    """``x - mu`` traced twice is one value to the backward pass (the ops are equal), so the
    program is the one of a layernorm that names it once, and its derivative counts both
    uses."""
    x, g = uniform(-1, 1, (4, 8)), uniform(0.5, 1.5, (8,))
    twice = dtc.compile(dtc.grad(_layernorm_twice, argnums=(0, 1))).lower(x, g)
    once = dtc.compile(dtc.grad(_layernorm_once, argnums=(0, 1))).lower(x, g)
    assert twice.ir("simplify").replace("_layernorm_twice", "f") == \
        once.ir("simplify").replace("_layernorm_once", "f")
    check(lambda x, g: np.stack([_layernorm_twice(x, g)]), x, g)
    same = dtc.grad(lambda a: np.sum(np.tanh(a) * np.tanh(a)))(x)
    np.testing.assert_allclose(np.asarray(same), 2 * np.tanh(x) / np.cosh(x) ** 2, rtol=1e-12)


def test_a_commuted_maximum_is_not_the_earlier_one_at_ties():
    """``maximum`` gives a tie's derivative to its first operand: ``maximum(b, a)`` after a
    ``maximum(a, b)`` keeps its own, so ``max(b, a) + min(a, b) = a + b`` has gradient 1."""
    a, b = np.array([1.0, 2.0, 3.0, -1.0]), np.array([1.0, 0.0, 3.0, -1.0])

    def loss(a, b):
        seen = np.maximum(a, b)
        return np.sum(np.maximum(b, a) + np.minimum(a, b)) + 0.0 * np.sum(seen)

    for g in dtc.grad(loss, argnums=(0, 1))(a, b):
        np.testing.assert_array_equal(np.asarray(g), np.ones(4))


def test_finding_repeated_ops_is_linear(monkeypatch):
    """Ops that share their operands but not their attributes (the rows of one array) are
    compared by a hashed key, each computed once."""
    from dtensor_compiler.tracing import autodiff

    n = 300
    x = uniform(-1, 1, (n, 4))
    calls = []
    real = autodiff.cse_key
    monkeypatch.setattr(autodiff, "cse_key", lambda *a, **k: calls.append(1) or real(*a, **k))
    g = dtc.grad(lambda x: sum(np.sum(x[i] * x[i] * (i + 0.5)) for i in range(n)))(x)
    np.testing.assert_allclose(np.asarray(g), 2 * x * (np.arange(n)[:, None] + 0.5))
    assert len(calls) <= 3 * n


def _refused(x):
    aux = np.real(x * 1j)
    loss = np.sum(np.real(x * 1j))  # the derivative flows through this line
    return loss, aux


def test_a_refused_derivative_names_the_copy_it_flows_through():
    line = inspect.getsourcelines(_refused)[1] + 2
    with pytest.raises(dtc.GradientError, match=rf"test_autodiff.py:{line}: cannot "
                                                r"differentiate through complex values"):
        dtc.grad(_refused, has_aux=True)(np.ones(3))


def test_a_cotangent_negated_to_the_end_is_negated_once():
    a = uniform(-1, 1, (3, 4))
    f = dtc.compile(dtc.grad(lambda a, b: np.sum(np.exp(b - a)), argnums=0))
    ir = f.lower(a, a).ir("simplify")
    assert ir.count(" = negative ") == 1
    np.testing.assert_allclose(np.asarray(f(a, a + 1)), -np.exp(1.0) * np.ones((3, 4)))


def test_derivatives_are_partial_in_each_argument_even_of_one_array():
    """As JAX has it: one array passed as two arguments gets each argument's partial
    derivative, and an array the function also closes over is a constant there."""
    mesh = dtc.create_mesh([("x", 2)])
    x = uniform(-1, 1, (4, 3))

    @dtc.compile(in_layouts=dtc.Layout(["x", U], mesh))
    def twice(x):
        return dtc.grad(lambda p, q: np.sum(p - q * p), argnums=(0, 1))(x, x)

    @dtc.compile(in_layouts=dtc.Layout(["x", U], mesh))
    def closed_over(x):
        return dtc.grad(lambda p: np.sum(p * x))(x)

    gp, gq = twice(x)
    np.testing.assert_allclose(np.asarray(gp), 1 - x)
    np.testing.assert_allclose(np.asarray(gq), -x)
    np.testing.assert_allclose(np.asarray(closed_over(x)), x)
    assert "reshape" not in closed_over.lower(x).ir("simplify")  # (the argument's alias)


def test_gradients_of_a_sharded_program_match_the_single_device_ones():
    mesh = dtc.create_mesh([("dp", 2), ("tp", 4)])
    layouts = (dtc.Layout([U, "tp"], mesh), dtc.Layout(["tp", U], mesh),
               dtc.Layout(["dp", U], mesh))
    x, w1, w2 = uniform(-1, 1, (8, 4)), uniform(-1, 1, (4, 16)), uniform(-1, 1, (16, 4))

    def loss(w1, w2, x):
        return np.mean((np.tanh(x @ w1) @ w2) ** 2)

    @dtc.compile(in_layouts=layouts)
    def step(w1, w2, x):
        value, (g1, g2) = dtc.value_and_grad(loss, argnums=(0, 1))(w1, w2, x)
        return value, g1, g2

    value, g1, g2 = step(w1, w2, x)
    assert np.asarray(value) == pytest.approx(loss(w1, w2, x))
    np.testing.assert_allclose(np.asarray(g1), numeric_grad(loss, (w1, w2, x), 0), atol=1e-7)
    np.testing.assert_allclose(np.asarray(g2), numeric_grad(loss, (w1, w2, x), 1), atol=1e-7)
    x7 = uniform(-1, 1, (7, 4))  # 7 rows over dp=2: uneven blocks
    np.testing.assert_allclose(np.asarray(step(w1, w2, x7)[1]),
                               numeric_grad(loss, (w1, w2, x7), 0), atol=1e-7)


def test_a_relayout_derivative_returns_to_the_source_layout():
    mesh = dtc.create_mesh([("x", 4)])
    rows, cols = dtc.Layout(["x", U], mesh), dtc.Layout([U, "x"], mesh)

    @dtc.compile(in_layouts=(rows,))
    def step(a):
        return dtc.grad(lambda a: np.sum(np.sin(dtc.relayout(a, cols))))(a)

    a = uniform(-1, 1, (8, 8))
    np.testing.assert_allclose(np.asarray(step(a)), np.cos(a))
    assert step(a).layout == rows


def test_errors_name_what_cannot_be_differentiated():
    x = uniform(-1, 1)
    with pytest.raises(dtc.GradientError, match=r"floating-point scalar output; it returned "
                                                r"f64\[3, 4\]"):
        dtc.grad(lambda x: x * 2)(x)
    with pytest.raises(dtc.GradientError, match=r"returned i64\[\]"):
        dtc.grad(lambda x: np.sum(x > 0))(x)
    with pytest.raises(dtc.GradientError, match="argument 0 is i64"):
        dtc.grad(lambda n: np.sum(n * 1.0))(np.arange(3))
    with pytest.raises(dtc.GradientError, match="argnums 2 is out of range for 1 arguments"):
        dtc.grad(np.sum, argnums=2)(x)
    line = test_errors_name_what_cannot_be_differentiated.__code__.co_firstlineno + 15
    message = (rf"test_autodiff.py:{line}: cannot differentiate through complex values: "
               "real takes one that depends on a differentiated input")
    with pytest.raises(dtc.GradientError, match=message):
        dtc.grad(lambda x: np.sum(np.real(x * 1j)))(x)
    with pytest.raises(dtc.GradientError, match=re.escape("pair (output, aux)")):
        dtc.grad(lambda x: np.sum(x), has_aux=True)(x)
    line = test_errors_name_what_cannot_be_differentiated.__code__.co_firstlineno + 21
    with pytest.raises(dtc.GradientError, match=rf"test_autodiff.py:{line}: .*it returned a "
                                                r"tuple \(with has_aux=True"):
        dtc.grad(lambda x: (np.sum(x), x))(x)
    for bad in (True, 1.5, ()):
        with pytest.raises(dtc.GradientError, match="argnums must be an int or a non-empty "
                                                    "tuple of ints"):
            dtc.grad(np.sum, argnums=bad)
    with pytest.raises(dtc.GradientError, match=r"keyword arguments \['s'\]"):
        dtc.grad(lambda x, s: np.sum(x) * s)(x, s=2.0)


def test_complex_values_off_the_differentiated_path_are_fine():
    """A complex value made from a differentiated input but not on the way to the output
    (an aux output, a dead intermediate) needs no derivative."""
    x = uniform(0.5, 1.5)
    g, aux = dtc.grad(lambda x: (np.sum(x ** 2), x * 1j), has_aux=True)(x)
    np.testing.assert_allclose(np.asarray(g), 2 * x)
    np.testing.assert_allclose(np.asarray(aux), x * 1j)

    def dead(x):
        x.astype(np.complex128)
        return np.sum(x ** 2)
    np.testing.assert_allclose(np.asarray(dtc.grad(dead)(x)), 2 * x)


def test_an_op_without_a_rule_is_named_with_the_users_line(monkeypatch):
    """Every built-in op has a rule; one registered without (here: sort, its rule taken
    away) is refused at the line that called it."""
    import dataclasses

    from dtensor_compiler.ir import opdef

    monkeypatch.setitem(opdef._REGISTRY, "sort",
                        dataclasses.replace(opdef.lookup("sort"), vjp=None))
    line = test_an_op_without_a_rule_is_named_with_the_users_line.__code__.co_firstlineno + 13
    message = (rf"test_autodiff.py:{line}: cannot differentiate through sort: it has no "
               "derivative rule")
    with pytest.raises(dtc.GradientError, match=message):
        dtc.grad(lambda x: np.sum(np.sort(x, axis=1) * x))(uniform(-1, 1))


NO_DERIVATIVE = {
    # integer or bool results, which never carry a derivative
    "logical_not", "invert", "isnan", "isinf", "isfinite", "signbit", "equal", "not_equal",
    "less", "less_equal", "greater", "greater_equal", "logical_and", "logical_or",
    "logical_xor", "bitwise_and", "bitwise_or", "bitwise_xor", "left_shift", "right_shift",
    "gcd", "lcm", "argmax", "argmin", "argsort",
    # no operands
    "constant", "full", "iota",
    # localized or effectful ops, never in a traced forward pass
    "save", "save_shard", "barrier", "merge_index", "restore_shard", "all_reduce",
    "reduce_scatter", "all_to_all", "all_gather", "local_slice", "make_partial", "mask",
    "kernel",
}


def test_every_other_op_has_a_derivative_rule():
    from dtensor_compiler.ir import opdef

    missing = {d.name for d in opdef.registered()
               if d.vjp is None and not d.name.startswith("test_")}  # ops tests register
    assert missing == NO_DERIVATIVE


def test_a_programs_scalars_and_the_rules_are_traced_once_each():
    """The recorder makes one ``full`` per dtype, shape and value bits: the program's ``2.0``
    and ``0.5`` (each written twice) and the rules' scalars are each one op, reused; 0.0 and
    -0.0 stay two, and ``x * 2`` on an integer array keeps its own integer scalar."""
    x = uniform(-1, 1, (4, 3))
    n = np.arange(12, dtype=np.int32).reshape(4, 3)

    def fn(x, n):
        y = (x * 2.0) ** 2 + 0.5 * x + (x + 0.0) * (x + -0.0) + 2.0 * x * 0.5
        return np.sum(y) + np.sum(n * 2).astype(np.float32)

    f = dtc.compile(dtc.value_and_grad(fn))
    fulls = [line.split(" = full ")[1] for line in f.lower(x, n).ir("trace").splitlines()
             if " = full " in line]
    assert len(fulls) == len(set(fulls))
    assert sum("value = 2.0}" in v for v in fulls) == 1
    assert sum("value = 0.0}" in v for v in fulls) == 1
    assert sum("value = -0.0}" in v for v in fulls) == 1
    assert sum("value = 2}" in v and "i32" in v for v in fulls) == 1
    value, grad = f(x, n)
    x64 = x.astype(np.float64)
    want = (2 * x64) ** 2 + 0.5 * x64 + x64 * x64 + x64
    np.testing.assert_allclose(np.asarray(value), want.sum() + 2 * n.sum(), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(grad), 8 * x64 + 0.5 + 2 * x64 + 1, rtol=1e-5)


def test_a_transposed_derivative_is_made_by_its_einsum_not_by_a_transpose_after_it():
    """d/dk of ``q @ k^T``: the einsum making it writes k's order of dims directly, so the
    backward pass adds no transpose (the forward's one stays)."""
    q, k = uniform(-1, 1, (2, 3, 4)), uniform(-1, 1, (2, 5, 4))
    f = dtc.compile(dtc.grad(lambda q, k: np.sum(np.tanh(q @ k.transpose(0, 2, 1))),
                             argnums=(0, 1)))
    assert f.lower(q, k).ir("simplify").count(" = transpose ") == 1
    gq, gk = f(q, k)
    d = 1 - np.tanh(q @ k.transpose(0, 2, 1)) ** 2
    np.testing.assert_allclose(np.asarray(gq), d @ k, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(gk), d.transpose(0, 2, 1) @ q, rtol=1e-12)


@pytest.mark.parametrize("perms, backward", [(((1, 0, 2), (0, 2, 1)), 1),
                                             (((1, 0, 2), (1, 0, 2)), 0)])
def test_the_derivatives_of_two_transposes_in_a_row_are_one_transpose_or_none(perms, backward):
    x = uniform(-1, 1, (2, 3, 4))
    first, second = perms
    f = dtc.compile(dtc.grad(lambda x: np.sum(np.sin(x.transpose(first).transpose(second)))))
    assert f.lower(x).ir("simplify").count(" = transpose ") == 2 + backward
    np.testing.assert_allclose(np.asarray(f(x)), np.cos(x), rtol=1e-12)


def _tanh_layer_loss(p, x):
    return np.sum(np.tanh(x @ p["w"] + p["b"]))


def _tanh_layer_grads(p, x):
    d = 1 - np.tanh(x @ p["w"] + p["b"]) ** 2
    return x.T @ d, d.sum(0), d @ p["w"].T


def test_gradients_with_respect_to_a_dict_of_parameters_come_back_as_that_dict():
    """Inside a compiled step, as at top level: an argument may be a nesting of dicts,
    lists and tuples (named ones too) of arrays, and its gradient has its structure."""
    from collections import namedtuple
    pair = namedtuple("pair", "w b")
    mesh = dtc.create_mesh([("x", 2)])
    p = {"w": uniform(-1, 1, (4, 3)), "b": uniform(-1, 1, (3,))}
    x = uniform(-1, 1, (6, 4))

    @dtc.compile(in_layouts=(None, None, dtc.Layout(["x", U], mesh)))
    def step(w, b, x):
        value, g = dtc.value_and_grad(_tanh_layer_loss)({"w": w, "b": b}, x)
        (nested,) = dtc.grad(lambda q, x: np.sum(np.tanh(x @ q[0].w + q[1][0])),
                             argnums=(0,))([pair(w, b), [b]], x)
        return value, g, nested

    value, g, nested = step(p["w"], p["b"], x)
    gw, gb, _ = _tanh_layer_grads(p, x)
    assert sorted(g) == ["b", "w"] and type(nested[0]) is pair and type(nested[1]) is list
    np.testing.assert_allclose(float(value), _tanh_layer_loss(p, x), rtol=1e-12)
    for got, want in ((g["w"], gw), (g["b"], gb), (nested[0].w, gw), (nested[0].b, 0 * gb),
                      (nested[1][0], gb)):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-12, atol=1e-15)


def test_top_level_gradients_of_nested_arguments_and_of_python_numbers():
    p = {"w": uniform(-1, 1, (4, 3)), "b": uniform(-1, 1, (3,))}
    x = uniform(-1, 1, (6, 4))
    gp, gx = dtc.grad(_tanh_layer_loss, argnums=(0, 1))(p, x)
    gw, gb, want_x = _tanh_layer_grads(p, x)
    assert sorted(gp) == ["b", "w"]
    np.testing.assert_allclose(np.asarray(gp["w"]), gw, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(gp["b"]), gb, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(gx), want_x, rtol=1e-12)
    # a Python float differentiated is a 0-d array (it was a constant of the program)
    np.testing.assert_allclose(float(dtc.grad(np.sin)(1.0)), np.cos(1.0), rtol=1e-15)
    g = dtc.grad(lambda v: np.sin(v[0]) * v[1])([1.0, 2.0])
    assert type(g) is list
    np.testing.assert_allclose([float(v) for v in g], [2 * np.cos(1.0), np.sin(1.0)])


def test_a_nested_argument_that_cannot_be_differentiated_is_named_by_its_path():
    w = uniform(-1, 1, (4, 3))
    with pytest.raises(dtc.GradientError, match=r"argument 0\['n'\] is i64\[4, 3\]"):
        dtc.grad(lambda p: np.sum(p["w"] * p["n"]))({"w": w, "n": np.ones((4, 3), int)})
    with pytest.raises(dtc.GradientError, match=r"got a str \(argument 0\[1\]\)"):
        dtc.compile(lambda w: dtc.grad(lambda p: np.sum(p[0]))([w, "w"]))(w)
    with pytest.raises(dtc.GradientError, match="a dict whose keys do not sort"):
        dtc.grad(lambda p: np.sum(p["a"]))({"a": w, 1: w})


def test_top_level_gradients_of_tuples_and_named_tuples_keep_them_whole():
    from collections import namedtuple
    pair = namedtuple("pair", "w b")
    a = uniform(-1, 1, (4,))
    g = dtc.grad(lambda p: np.sum(p[0] * p[1]))((a, 2 * a))
    assert type(g) is tuple and len(g) == 2
    np.testing.assert_allclose(np.asarray(g[0]), 2 * a)
    np.testing.assert_allclose(np.asarray(g[1]), a)
    value, g = dtc.value_and_grad(lambda p: np.sum(p.w * p.b))(pair(a, 2 * a))
    assert type(g) is pair
    np.testing.assert_allclose(np.asarray(g.b), a)
    assert dtc.grad(lambda p, x: np.sum(x))((), a) == ()
