"""Elementwise ops: numpy's unary and binary ufuncs, ``where``, ``astype``, ``real`` and
``imag``.

A ufunc op is named after its numpy ufunc (``add``, ``tanh``, ``greater_equal``) and has its
semantics, numpy broadcasting and dtype promotion included. Every elementwise op shards by
broadcasting: each result dim is one factor, shared by the operand dims not broadcast into it.
"""

from __future__ import annotations

from collections.abc import Sequence

from dtensor_compiler.ir import factors
from dtensor_compiler.ir.inference import broadcast_shapes, declared_type, ufunc_result_dtype
from dtensor_compiler.ir.opdef import (
    ALL_OPERANDS,
    Attrs,
    Factors,
    InferContext,
    InferFn,
    OpDef,
    ResultSig,
    Traits,
    register,
    same_type,
)
from dtensor_compiler.ir.sharding import ReduceOp
from dtensor_compiler.ir.types import TensorType

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


def _define_ufunc(name: str, arity: int) -> OpDef:
    return register(OpDef(name=name, operands=arity, infer=_ufunc_infer(name),
                          sharding=BROADCASTING, folds=True,
                          traits=_TRAITS.get(name, Traits(elementwise=True))))


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


WHERE = register(OpDef(name="where", operands=3, infer=_where, sharding=BROADCASTING,
                       folds=True, traits=Traits(elementwise=True)))
"""``where(cond, x, y)``: x where cond, else y."""


def _astype(ts: Sequence[TensorType], attrs: Attrs, declared: Sequence[TensorType],
            ctx: InferContext) -> list[ResultSig]:
    target = declared_type(declared)
    if target.shape != ts[0].shape:
        raise ValueError(f"astype cannot change the shape {list(ts[0].shape)} to "
                         f"{list(target.shape)}")
    return [(target.dtype, target.shape)]


ASTYPE = register(OpDef(name="astype", operands=1, infer=_astype, sharding=BROADCASTING,
                        folds=True, declared_type=True, traits=Traits(elementwise=True),
                        identity=same_type))
"""Conversion to the declared result dtype."""


def _component(ts: Sequence[TensorType], attrs: Attrs, declared: Sequence[TensorType],
               ctx: InferContext) -> list[ResultSig]:
    t = ts[0]
    if not t.dtype.startswith("c"):
        raise ValueError(f"real and imag take a complex operand, got {t.dtype}")
    return [(ufunc_result_dtype("absolute", (t.dtype,)), t.shape)]


_LINEAR_PART = Traits(elementwise=True, commutes_with=frozenset({ReduceOp.SUM}))

REAL = register(OpDef(name="real", operands=1, infer=_component, sharding=BROADCASTING,
                      folds=True, traits=_LINEAR_PART))
"""The real part of a complex operand (numpy's ``real``), in the matching float dtype."""

IMAG = register(OpDef(name="imag", operands=1, infer=_component, sharding=BROADCASTING,
                      folds=True, traits=_LINEAR_PART))
"""The imaginary part of a complex operand (numpy's ``imag``)."""
