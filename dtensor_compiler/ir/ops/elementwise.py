"""Elementwise ops: numpy's unary and binary ufuncs, ``where``, ``astype``, ``real`` and
``imag``.

A ufunc op is named after its numpy ufunc (``add``, ``tanh``, ``greater_equal``) and has its
semantics, numpy broadcasting and dtype promotion included. Every elementwise op shards by
broadcasting: each result dim is one factor, shared by the operand dims not broadcast into it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from dtensor_compiler.ir import factors
from dtensor_compiler.ir.core import Operation, Value
from dtensor_compiler.ir.inference import broadcast_shapes, declared_type, ufunc_result_dtype
from dtensor_compiler.ir.opdef import (
    ALL_OPERANDS,
    Attrs,
    Factors,
    InferContext,
    InferFn,
    OpDef,
    PaddingRead,
    ResultSig,
    Traits,
    VJPRule,
    register,
    same_type,
)
from dtensor_compiler.ir.sharding import ReduceOp
from dtensor_compiler.ir.types import TensorType
from dtensor_compiler.ir.vjp import VJPContext, differentiable

UNARY_UFUNCS: tuple[str, ...] = (
    "negative", "positive", "exp", "exp2", "expm1", "log", "log2", "log10", "log1p", "tanh",
    "sinh", "cosh", "sin", "cos", "tan", "arcsin", "arccos", "arctan", "arcsinh", "arccosh",
    "arctanh", "sqrt", "cbrt", "square", "reciprocal", "absolute", "fabs", "sign", "floor", "ceil",
    "rint", "trunc", "logical_not", "invert", "isnan", "isinf", "isfinite", "signbit",
    "deg2rad", "rad2deg", "degrees", "radians", "conjugate", "spacing",
)
BINARY_UFUNCS: tuple[str, ...] = (
    "add", "subtract", "multiply", "divide", "floor_divide", "remainder", "fmod", "power",
    "float_power", "maximum", "minimum", "fmax", "fmin", "equal", "not_equal", "less",
    "less_equal", "greater", "greater_equal", "logical_and", "logical_or", "logical_xor",
    "bitwise_and", "bitwise_or", "bitwise_xor", "left_shift", "right_shift", "arctan2", "hypot",
    "copysign", "nextafter", "logaddexp", "logaddexp2", "heaviside", "ldexp", "gcd", "lcm",
)

_EVERY_REDUCTION = frozenset(ReduceOp)
_TRAITS: dict[str, Traits] = {
    "positive": Traits(elementwise=True, commutes_with=_EVERY_REDUCTION),
    "negative": Traits(elementwise=True, commutes_with=frozenset({ReduceOp.SUM})),
    "add": Traits(elementwise=True, commutative=True, commutes_with=frozenset({ReduceOp.SUM})),
    "subtract": Traits(elementwise=True, commutes_with=frozenset({ReduceOp.SUM})),
    "multiply": Traits(elementwise=True, commutative=True, linear_in=ALL_OPERANDS),
    "divide": Traits(elementwise=True, linear_in=(0,)),
    "maximum": Traits(elementwise=True, commutative=True,
                      commutes_with=frozenset({ReduceOp.MAX})),
    "fmax": Traits(elementwise=True, commutative=True, commutes_with=frozenset({ReduceOp.MAX})),
    "minimum": Traits(elementwise=True, commutative=True,
                      commutes_with=frozenset({ReduceOp.MIN})),
    "fmin": Traits(elementwise=True, commutative=True, commutes_with=frozenset({ReduceOp.MIN})),
    **{name: Traits(elementwise=True, commutative=True) for name in (
        "equal", "not_equal", "logical_and", "logical_or", "logical_xor", "bitwise_and",
        "bitwise_or", "bitwise_xor", "hypot", "logaddexp", "logaddexp2", "gcd", "lcm")},
}
"""Traits beyond `elementwise`, which every op here has."""

BROADCASTING = Factors(lambda attrs, operands, result: factors.broadcasting(operands, result))


def _ufunc_infer(name: str) -> InferFn:
    def infer(ts: Sequence[TensorType], attrs: Attrs, declared: Sequence[TensorType],
              ctx: InferContext) -> list[ResultSig]:
        if len(ts) == 1:
            return [(ufunc_result_dtype(name, (ts[0].dtype,)), ts[0].shape)]
        a, b = ts
        shape = a.shape if a.shape == b.shape else broadcast_shapes(a.shape, b.shape)
        return [(ufunc_result_dtype(name, (a.dtype, b.dtype)), shape)]
    return infer


# -- derivatives ----------------------------------------------------------------------------------
# Each unary rule gives d(out)/dx from (ad, x, out); each binary rule the cotangents of both
# operands. Ops whose result is bool or an integer never carry a derivative and have no rule;
# piecewise-constant ops (floor, sign, ...) pass none on.


def _mul(ad: VJPContext, *vs: Value) -> Value:
    """The product of `vs`, a negation of a factor (that nothing else reads) taken out of
    it, so that the caller's cotangent is a negation the backward pass carries instead."""
    negated = [ad.negation_of(v) for v in vs]
    factors = [v if inner is None else inner for v, inner in zip(vs, negated)]
    out = factors[0]
    for v in factors[1:]:
        out = ad.emit("multiply", [out, v])
    odd = sum(inner is not None for inner in negated) % 2
    return ad.negate(out) if odd else out


def _unary(derivative: Callable[[VJPContext, Value, Value], Value]) -> VJPRule:
    def rule(ad: VJPContext, op: Operation, g: Value) -> list[Value | None]:
        (x,) = op.operands
        assert op.result is not None
        return [ad.to_operand(_mul(ad, g, derivative(ad, x, op.result)), x)]
    return rule


def _reciprocal_of(ad: VJPContext, v: Value) -> Value:
    return ad.emit("reciprocal", [v])


def _one_minus_square(ad: VJPContext, v: Value) -> Value:
    return ad.emit("subtract", [ad.scalar(1.0, v), ad.emit("square", [v])])


def _scaled(factor: float) -> Callable[[VJPContext, Value, Value], Value]:
    return lambda ad, x, out: ad.scalar(factor, x)


def _linear(sign: float) -> VJPRule:
    def rule(ad: VJPContext, op: Operation, g: Value) -> list[Value | None]:
        (x,) = op.operands
        return [ad.to_operand(g if sign > 0 else ad.negate(g), x)]
    return rule


def _sqrt_vjp(ad: VJPContext, op: Operation, g: Value) -> list[Value | None]:
    (x,) = op.operands
    assert op.result is not None
    return [ad.to_operand(ad.emit("divide", [g, _mul(ad, op.result, ad.scalar(2.0, x))]), x)]


def _no_derivative(ad: VJPContext, op: Operation, g: Value) -> list[Value | None]:
    return [None] * len(op.operands)


_UNARY_VJPS: dict[str, VJPRule] = {
    "negative": _linear(-1.0), "positive": _linear(1.0), "conjugate": _linear(1.0),
    "sqrt": _sqrt_vjp,
    "exp": _unary(lambda ad, x, out: out),
    "exp2": _unary(lambda ad, x, out: _mul(ad, out, ad.scalar(math.log(2.0), x))),
    "expm1": _unary(lambda ad, x, out: ad.emit("add", [out, ad.scalar(1.0, x)])),
    "log": _unary(lambda ad, x, out: _reciprocal_of(ad, x)),
    "log2": _unary(lambda ad, x, out: _reciprocal_of(ad, _mul(ad, x, ad.scalar(math.log(2), x)))),
    "log10": _unary(lambda ad, x, out: _reciprocal_of(ad, _mul(ad, x,
                                                                 ad.scalar(math.log(10), x)))),
    "log1p": _unary(lambda ad, x, out: _reciprocal_of(ad, ad.emit("add", [x, ad.scalar(1, x)]))),
    "tanh": _unary(lambda ad, x, out: _one_minus_square(ad, out)),
    "sinh": _unary(lambda ad, x, out: ad.emit("cosh", [x])),
    "cosh": _unary(lambda ad, x, out: ad.emit("sinh", [x])),
    "sin": _unary(lambda ad, x, out: ad.emit("cos", [x])),
    "cos": _unary(lambda ad, x, out: ad.negate(ad.emit("sin", [x]))),
    "tan": _unary(lambda ad, x, out: ad.emit("add", [ad.scalar(1.0, x), ad.emit("square", [out])])),
    "arcsin": _unary(lambda ad, x, out: _reciprocal_of(ad, ad.emit("sqrt", [
        _one_minus_square(ad, x)]))),
    "arccos": _unary(lambda ad, x, out: ad.negate(_reciprocal_of(ad, ad.emit(
        "sqrt", [_one_minus_square(ad, x)])))),
    "arctan": _unary(lambda ad, x, out: _reciprocal_of(ad, ad.emit(
        "add", [ad.scalar(1.0, x), ad.emit("square", [x])]))),
    "arcsinh": _unary(lambda ad, x, out: _reciprocal_of(ad, ad.emit("sqrt", [ad.emit(
        "add", [ad.emit("square", [x]), ad.scalar(1.0, x)])]))),
    "arccosh": _unary(lambda ad, x, out: _reciprocal_of(ad, ad.emit("sqrt", [ad.emit(
        "subtract", [ad.emit("square", [x]), ad.scalar(1.0, x)])]))),
    "arctanh": _unary(lambda ad, x, out: _reciprocal_of(ad, _one_minus_square(ad, x))),
    "cbrt": _unary(lambda ad, x, out: _reciprocal_of(ad, _mul(ad, ad.emit("square", [out]),
                                                              ad.scalar(3.0, x)))),
    "square": _unary(lambda ad, x, out: _mul(ad, x, ad.scalar(2.0, x))),
    "reciprocal": _unary(lambda ad, x, out: ad.negate(ad.emit("square", [out]))),
    "absolute": _unary(lambda ad, x, out: ad.emit("sign", [x])),
    "fabs": _unary(lambda ad, x, out: ad.emit("sign", [x])),
    "deg2rad": _unary(_scaled(math.pi / 180)), "radians": _unary(_scaled(math.pi / 180)),
    "rad2deg": _unary(_scaled(180 / math.pi)), "degrees": _unary(_scaled(180 / math.pi)),
    **dict.fromkeys(("sign", "floor", "ceil", "rint", "trunc", "spacing"), _no_derivative),
}


def _binary(dx: Callable[[VJPContext, Value, Value, Value, Value], Value | None],
            dy: Callable[[VJPContext, Value, Value, Value, Value], Value | None]) -> VJPRule:
    """A rule from the cotangents of x and y given (ad, g, x, y, out), before broadcasting."""
    def rule(ad: VJPContext, op: Operation, g: Value) -> list[Value | None]:
        x, y = op.operands
        assert op.result is not None
        out = op.result
        gx = dx(ad, g, x, y, out) if ad.wants(0) and differentiable(x.type) else None
        gy = dy(ad, g, x, y, out) if ad.wants(1) and differentiable(y.type) else None
        return [None if gx is None else ad.to_operand(gx, x),
                None if gy is None else ad.to_operand(gy, y)]
    return rule


def _picking(picks_x: Callable[[VJPContext, Value, Value], Value]) -> VJPRule:
    """The rule of an op that returns one of its operands (``maximum``): the cotangent goes
    to x where `picks_x` holds, to y elsewhere."""
    return _binary(lambda ad, g, x, y, out: _select(ad, picks_x(ad, x, y), g, True),
                   lambda ad, g, x, y, out: _select(ad, picks_x(ad, x, y), g, False))


def _or_nan(ad: VJPContext, picks: Value, y: Value) -> Value:
    """`picks`, or where y is NaN: ``fmax`` and ``fmin`` return the operand that is not."""
    return ad.emit("logical_or", [picks, ad.emit("isnan", [y])])


def _select(ad: VJPContext, cond: Value, g: Value, when: bool) -> Value:
    zero = ad.scalar(0.0, g)
    return ad.emit("where", [cond, g, zero] if when else [cond, zero, g])


def _power_dx(ad: VJPContext, g: Value, x: Value, y: Value, out: Value) -> Value:
    """``y * x**(y - 1)``; 0 where ``y == 0`` (``x**0`` is 1 everywhere, also at ``x == 0``,
    where the formula is ``0 * inf``)."""
    if _is_full(y, 2.0):  # x**2, the common case: x**1 is x
        return _mul(ad, g, y, x)
    one = ad.scalar(1.0, out)
    flat = ad.emit("equal", [y, ad.scalar(0.0, y)])
    safe = ad.emit("where", [flat, one, y])  # (no 0**-1 computed where it is not used)
    slope = _mul(ad, safe, ad.emit("power", [x, ad.emit("subtract", [safe, one])]))
    return _mul(ad, g, ad.emit("where", [flat, ad.scalar(0.0, slope), slope]))


def _is_full(v: Value, value: float) -> bool:
    """Whether `v` is a ``full`` of `value`."""
    return v.owner is not None and v.owner.name == "full" and v.owner.attrs["value"] == value


def _power_dy(ad: VJPContext, g: Value, x: Value, y: Value, out: Value) -> Value:
    """``x**y * log(x)``; 0 where ``x == 0`` (``0**y`` is constant in y, where the formula
    is ``0 * -inf``)."""
    zero = ad.emit("equal", [x, ad.scalar(0.0, x)])
    return _mul(ad, g, out, ad.emit("log", [ad.emit("where", [zero, ad.scalar(1.0, x), x])]))


def _logaddexp(exp: str) -> VJPRule:
    """The rule of ``logaddexp`` (`exp` ``exp``; ``logaddexp2``: ``exp2``). Its derivative
    in x is ``exp(x - out)``, which is ``inf - inf`` where x is infinite: 1 where x is the
    result (the other operand -inf, or x +inf), 0 where x is -inf (a masked position: both
    -inf included); in y likewise."""
    def d(ad: VJPContext, g: Value, x: Value, y: Value, out: Value) -> Value:
        same = ad.emit("equal", [x, out])
        zero = ad.scalar(0.0, out)
        difference = ad.emit("subtract", [ad.emit("where", [same, zero, x]),
                                          ad.emit("where", [same, zero, out])])
        slope = ad.emit(exp, [difference])
        masked = ad.emit("equal", [x, ad.scalar(-math.inf, x)])
        return _mul(ad, g, ad.emit("where", [masked, ad.scalar(0.0, slope), slope]))
    return _binary(d, lambda ad, g, x, y, out: d(ad, g, y, x, out))


def _ratio(ad: VJPContext, g: Value, top: Value, out: Value) -> Value:
    return _mul(ad, g, ad.emit("divide", [top, out]))


def _atan2_denominator(ad: VJPContext, y: Value, x: Value) -> Value:
    return ad.emit("add", [ad.emit("square", [x]), ad.emit("square", [y])])


_BINARY_VJPS: dict[str, VJPRule] = {
    "add": _binary(lambda ad, g, x, y, out: g, lambda ad, g, x, y, out: g),
    "subtract": _binary(lambda ad, g, x, y, out: g,
                        lambda ad, g, x, y, out: ad.negate(g)),
    "multiply": _binary(lambda ad, g, x, y, out: _mul(ad, g, y),
                        lambda ad, g, x, y, out: _mul(ad, g, x)),
    "divide": _binary(lambda ad, g, x, y, out: ad.emit("divide", [g, y]),
                      lambda ad, g, x, y, out: ad.negate(
                          ad.emit("divide", [_mul(ad, g, out), y]))),
    "power": _binary(_power_dx, _power_dy),
    "float_power": _binary(_power_dx, _power_dy),
    "maximum": _picking(lambda ad, x, y: ad.emit("greater_equal", [x, y])),
    "minimum": _picking(lambda ad, x, y: ad.emit("less_equal", [x, y])),
    "fmax": _picking(lambda ad, x, y: _or_nan(ad, ad.emit("greater_equal", [x, y]), y)),
    "fmin": _picking(lambda ad, x, y: _or_nan(ad, ad.emit("less_equal", [x, y]), y)),
    "hypot": _binary(lambda ad, g, x, y, out: _ratio(ad, g, x, out),
                     lambda ad, g, x, y, out: _ratio(ad, g, y, out)),
    "arctan2": _binary(
        lambda ad, g, y, x, out: _ratio(ad, g, x, _atan2_denominator(ad, y, x)),
        lambda ad, g, y, x, out: ad.negate(
            _ratio(ad, g, y, _atan2_denominator(ad, y, x)))),
    "logaddexp": _logaddexp("exp"),
    "logaddexp2": _logaddexp("exp2"),
    "remainder": _binary(lambda ad, g, x, y, out: g, lambda ad, g, x, y, out: ad.negate(
        _mul(ad, g, ad.emit("floor", [ad.emit("divide", [x, y])])))),
    "fmod": _binary(lambda ad, g, x, y, out: g, lambda ad, g, x, y, out: ad.negate(
        _mul(ad, g, ad.emit("trunc", [ad.emit("divide", [x, y])])))),
    "copysign": _binary(lambda ad, g, x, y, out: ad.emit("where", [
        ad.emit("equal", [ad.emit("signbit", [x]), ad.emit("signbit", [y])]), g,
        ad.negate(g)]), lambda ad, g, x, y, out: None),
    "ldexp": _binary(lambda ad, g, x, y, out: ad.emit("ldexp", [g, y]),
                     lambda ad, g, x, y, out: None),
    **dict.fromkeys(("floor_divide", "heaviside", "nextafter"), _binary(
        lambda ad, g, x, y, out: None, lambda ad, g, x, y, out: None)),
}


def _integer_exponent_reads_padding(op: Operation) -> list[PaddingRead]:
    """numpy refuses an integer raised to a negative integer power, which garbage in the
    exponent's padding may be: it must hold zeros there."""
    exponent = op.operands[1].type
    if not exponent.dtype.startswith(("i", "u")):
        return []
    return [PaddingRead(1, tuple(range(exponent.rank)), ReduceOp.SUM)]


_READS_PADDING = {"power": _integer_exponent_reads_padding}


def _define_ufunc(name: str, arity: int) -> OpDef:
    vjps = _UNARY_VJPS if arity == 1 else _BINARY_VJPS
    return register(OpDef(name=name, operands=arity, infer=_ufunc_infer(name),
                          sharding=BROADCASTING, folds=True,
                          traits=_TRAITS.get(name, Traits(elementwise=True)),
                          vjp=vjps.get(name), reads_padding=_READS_PADDING.get(name)))


UFUNCS: dict[str, OpDef] = {
    **{name: _define_ufunc(name, 1) for name in UNARY_UFUNCS},
    **{name: _define_ufunc(name, 2) for name in BINARY_UFUNCS},
}
"""The ufunc ops by name (the name of their numpy ufunc)."""


def _where(ts: Sequence[TensorType], attrs: Attrs, declared: Sequence[TensorType],
           ctx: InferContext) -> list[ResultSig]:
    if ts[0].dtype != "bool":
        raise ValueError(f"where condition must be bool, got {ts[0].dtype}")
    shape = broadcast_shapes(ts[0].shape, ts[1].shape, ts[2].shape)
    return [(ufunc_result_dtype("add", (ts[1].dtype, ts[2].dtype)), shape)]


def _where_vjp(ad: VJPContext, op: Operation, g: Value) -> list[Value | None]:
    cond, x, y = op.operands
    return [None, ad.to_operand(_select(ad, cond, g, True), x) if ad.wants(1) else None,
            ad.to_operand(_select(ad, cond, g, False), y) if ad.wants(2) else None]


WHERE = register(OpDef(name="where", operands=3, infer=_where, sharding=BROADCASTING,
                       folds=True, traits=Traits(elementwise=True), vjp=_where_vjp))
"""``where(cond, x, y)``: x where cond, else y."""


def _astype(ts: Sequence[TensorType], attrs: Attrs, declared: Sequence[TensorType],
            ctx: InferContext) -> list[ResultSig]:
    target = declared_type(declared)
    if target.shape != ts[0].shape:
        raise ValueError(f"astype cannot change the shape {list(ts[0].shape)} to "
                         f"{list(target.shape)}")
    return [(target.dtype, target.shape)]


def _astype_vjp(ad: VJPContext, op: Operation, g: Value) -> list[Value | None]:
    (x,) = op.operands
    return [ad.to_operand(g, x)]


ASTYPE = register(OpDef(name="astype", operands=1, infer=_astype, sharding=BROADCASTING,
                        folds=True, declared_type=True, traits=Traits(elementwise=True),
                        identity=same_type, vjp=_astype_vjp))
"""Conversion to the declared result dtype."""


def _component(ts: Sequence[TensorType], attrs: Attrs, declared: Sequence[TensorType],
               ctx: InferContext) -> list[ResultSig]:
    t = ts[0]
    if not t.dtype.startswith("c"):
        raise ValueError(f"real and imag take a complex operand, got {t.dtype}")
    return [(ufunc_result_dtype("absolute", (t.dtype,)), t.shape)]


_LINEAR_PART = Traits(elementwise=True, commutes_with=frozenset({ReduceOp.SUM}))

def _complex_operand_vjp(ad: VJPContext, op: Operation, g: Value) -> list[Value | None]:
    """Complex values carry no derivatives (differentiating into one is refused where it is
    made), so the complex operand of ``real``/``imag`` gets none."""
    return [None]


REAL = register(OpDef(name="real", operands=1, infer=_component, sharding=BROADCASTING,
                      folds=True, traits=_LINEAR_PART, vjp=_complex_operand_vjp))
"""The real part of a complex operand (numpy's ``real``), in the matching float dtype."""

IMAG = register(OpDef(name="imag", operands=1, infer=_component, sharding=BROADCASTING,
                      folds=True, traits=_LINEAR_PART, vjp=_complex_operand_vjp))
"""The imaginary part of a complex operand (numpy's ``imag``)."""


def _stop_gradient_vjp(ad: VJPContext, op: Operation, g: Value) -> list[Value | None]:
    return [None]


def _same(ts: Sequence[TensorType], attrs: Attrs, declared: Sequence[TensorType],
          ctx: InferContext) -> list[ResultSig]:
    return [(ts[0].dtype, ts[0].shape)]


STOP_GRADIENT = register(OpDef(
    name="stop_gradient", operands=1, infer=_same, sharding=BROADCASTING,
    folds=True, traits=_TRAITS["positive"], identity=lambda op: True, vjp=_stop_gradient_vjp))
"""``dtc.stop_gradient(x)``: `x`, through which no derivative flows. Simplify removes it once
the derivatives are taken (they are taken while tracing)."""
