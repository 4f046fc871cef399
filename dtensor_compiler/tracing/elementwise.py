"""Elementwise lowerings: ufunc calls, ``where``, ``clip``, ``astype``, ``round``, ``real`` and
``imag``.

Binary ops are emitted with numpy broadcasting left to the op. Python numbers are weakly typed
as in numpy 2 (NEP 50): ``x_f32 * 2.0`` stays f32. The dtype such a number gets in the IR is
chosen so that the op's inferred dtype equals what numpy itself returns for the same call on
one-element stand-ins; no promotion table is written here.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import DTypeLike

from dtensor_compiler.errors import ShapeError, UnsupportedOperationError
from dtensor_compiler.ir.core import Value
from dtensor_compiler.ir.inference import ufunc_result_dtype
from dtensor_compiler.ir.types import TensorType, dtype_name, numpy_dtype
from dtensor_compiler.tracing.location import user_location
from dtensor_compiler.tracing.recorder import (
    Operand,
    PythonScalar,
    Recorder,
    ir_dtype,
    is_python_scalar,
)

DtypeKey = np.dtype | tuple[type, PythonScalar]
"""What numpy's result dtype depends on: an array's dtype, or a Python number's type and value
(a weak number that does not fit the other operand's dtype is an error)."""


def _dtype_key(x: Operand) -> DtypeKey:
    if isinstance(x, Value):
        return numpy_dtype(x.type.dtype)
    if is_python_scalar(x):
        return (type(x), x)
    return np.asarray(x).dtype


def _stand_in(key: DtypeKey) -> object:
    """A one-element array of the key's dtype; Python numbers stay themselves (weak)."""
    return np.ones(1, key) if isinstance(key, np.dtype) else key[1]


@functools.lru_cache(maxsize=4096)
def _result_dtype(fn: Callable[..., np.ndarray], keys: tuple[DtypeKey, ...]) -> str:
    # Calling numpy costs far more than the lookup, and a model repeats a few dtype
    # combinations thousands of times.
    with np.errstate(all="ignore"):
        return ir_dtype(fn(*[_stand_in(k) for k in keys]).dtype)


def numpy_result_dtype(name: str, fn: Callable[..., np.ndarray], operands: Sequence[Operand]
                       ) -> str:
    """The dtype numpy's `fn` returns on `operands`; numpy's own error as a ShapeError."""
    try:
        return _result_dtype(fn, tuple(_dtype_key(x) for x in operands))
    except (TypeError, ValueError, OverflowError) as e:
        raise ShapeError(f"{name}: {e}", user_location()) from None


def _dtype_or_none(rule: Callable[[tuple[str, ...]], str], dtypes: tuple[str, ...]
                   ) -> str | None:
    try:
        return rule(dtypes)
    except TypeError:  # numpy has no loop for these dtypes
        return None


def lift_operands(rec: Recorder, name: str, operands: Sequence[Operand],
                  ir_result: Callable[[tuple[str, ...]], str], expected: str) -> list[Value]:
    """IR values for `operands`, giving each Python number the dtype under which
    `ir_result(operand dtypes)` (the op's dtype rule) equals numpy's dtype `expected`."""
    strong = {i: rec.value(x) for i, x in enumerate(operands) if not is_python_scalar(x)}
    weak = {i: x for i, x in enumerate(operands) if is_python_scalar(x)}
    strong_dtypes = [numpy_dtype(v.type.dtype) for v in strong.values()]
    candidates = [_candidates(strong_dtypes, x) for x in weak.values()]
    for choice in itertools.product(*candidates):
        chosen = dict(zip(weak, choice))
        dtypes = tuple(strong[i].type.dtype if i in strong else chosen[i]
                       for i in range(len(operands)))
        if _dtype_or_none(ir_result, dtypes) == expected:
            return [strong[i] if i in strong else rec.full((), chosen[i], operands[i])
                    for i in range(len(operands))]
    raise ShapeError(f"{name}: no operand dtypes give numpy's result dtype {expected}",
                     user_location())


def _candidates(strong: list[np.dtype], x: PythonScalar) -> list[str]:
    """The IR dtypes a Python number may take beside operands of `strong` dtypes: numpy's
    promotion of it with them, and its own default dtype (where either exists: an int beyond
    int64 has only the first, and only beside a float)."""
    out: list[str] = []
    for make in (lambda: np.result_type(*strong, x), lambda: np.asarray(x).dtype):
        try:
            name = dtype_name(make())
        except (TypeError, ValueError, OverflowError):
            continue
        if name not in out:
            out.append(name)
    return out


_MIRRORED = {"equal": "equal", "not_equal": "not_equal", "less": "greater",
             "less_equal": "greater_equal", "greater": "less", "greater_equal": "less_equal"}
"""Comparison ufuncs, and the one that gives the same answer with the operands swapped."""


def _beyond_range(rec: Recorder, name: str, operands: Sequence[Operand]) -> Value | None:
    """A comparison of an integer array with a Python int outside the array's dtype, which
    numpy answers exactly: every element lies on the same side of the number."""
    if name not in _MIRRORED or len(operands) != 2:
        return None
    for i, number in enumerate(operands):
        other = operands[1 - i]
        if type(number) is not int or not isinstance(other, Value):
            continue
        dtype = numpy_dtype(other.type.dtype)
        if dtype.kind not in "iu":
            continue
        info = np.iinfo(dtype)
        if info.min <= number <= info.max:
            continue
        op = name if i == 1 else _MIRRORED[name]  # now `array op number`
        above = number < info.min  # every element is greater than the number
        answer = {"equal": False, "not_equal": True, "less": not above,
                  "less_equal": not above, "greater": above, "greater_equal": above}[op]
        return rec.full(other.type.shape, "bool", answer)
    return None


def apply_ufunc(rec: Recorder, name: str, operands: Sequence[Operand]) -> Value:
    """The elementwise op `name` (a numpy ufunc name) on `operands`, broadcasting."""
    constant = _beyond_range(rec, name, operands)
    if constant is not None:
        return constant
    expected = numpy_result_dtype(f"numpy.{name}", getattr(np, name), operands)
    values = lift_operands(rec, name, operands, lambda ds: ufunc_result_dtype(name, ds),
                           expected)
    return rec.emit(name, values)


def _where_xy(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.where(True, x, y)


def where(rec: Recorder, condition: Operand, x: Operand, y: Operand) -> Value:
    """``np.where(condition, x, y)``; a non-bool condition is tested for being non-zero."""
    cond = astype(rec, rec.value(condition), np.bool_)
    expected = numpy_result_dtype("numpy.where", _where_xy, (x, y))
    a, b = lift_operands(rec, "where", (x, y), lambda ds: ufunc_result_dtype("add", ds),
                         expected)
    return rec.emit("where", [cond, a, b])


def clip(rec: Recorder, a: Operand, a_min: Operand | None = None,
         a_max: Operand | None = None) -> Value:
    """``np.clip``: ``minimum(maximum(a, a_min), a_max)``, either bound may be None, in the
    dtype numpy's clip gives (bfloat16 with Python bounds is clipped in float32)."""
    out = rec.value(a)
    dtype = numpy_dtype(out.type.dtype)
    if dtype.kind in "iu":  # a Python int bound beyond the dtype bounds nothing (numpy 2)
        info = np.iinfo(dtype)
        if type(a_min) is int and a_min < info.min:
            a_min = None
        if type(a_max) is int and a_max > info.max:
            a_max = None
    bounds = [b for b in (a_min, a_max) if b is not None]
    if bounds:
        expected = numpy_result_dtype("numpy.clip", _clip_dtype, (out, *bounds))
        out = astype(rec, out, numpy_dtype(expected))
    if a_min is not None:
        out = apply_ufunc(rec, "maximum", (out, a_min))
    if a_max is not None:
        out = apply_ufunc(rec, "minimum", (out, a_max))
    return out


def _clip_dtype(x: np.ndarray, *bounds: Any) -> np.ndarray:
    """numpy's clip against one or two bounds, for its result dtype."""
    return np.clip(x, bounds[0], bounds[-1]) if len(bounds) == 2 else np.clip(x, bounds[0], None)


def astype(rec: Recorder, x: Value, dtype: DTypeLike | None) -> Value:
    """`x` converted to numpy dtype `dtype` (no op when it already has it)."""
    target = ir_dtype(dtype)
    if target == x.type.dtype:
        return x
    return rec.emit("astype", [x], result=TensorType(target, x.type.shape))


def _power_of_ten(n: int) -> float:
    """``10.0 ** n`` multiplied up in doubles, as numpy's round computes its scale."""
    out = 1.0
    for _ in range(n):
        out *= 10.0
    return out


def round_(rec: Recorder, a: Operand, decimals: int = 0) -> Value:
    """``np.round``/``np.around`` as numpy computes it: ``rint(x * 10**d) / 10**d`` in the
    array's dtype (``rint(x / 10**-d) * 10**-d`` for negative `decimals`); integers are
    returned unchanged for ``decimals >= 0`` and rounded in f64 and cast back otherwise."""
    x = rec.value(a)
    if not isinstance(decimals, (int, np.integer)) or isinstance(decimals, (bool, np.bool_)):
        raise UnsupportedOperationError(f"numpy.round with decimals={decimals!r} is not "
                                        "supported: decimals must be an int", user_location())
    dtype = numpy_dtype(x.type.dtype)
    if dtype.kind == "b":
        raise ShapeError("numpy.round: cannot round a bool array (numpy has no loop for it)",
                         user_location())
    digits = int(decimals)
    if dtype.kind in "iu":
        if digits >= 0:
            return x
        x = astype(rec, x, np.float64)
    if digits == 0:
        out = apply_ufunc(rec, "rint", (x,))
    else:
        scale = _power_of_ten(abs(digits))
        first, then = ("multiply", "divide") if digits > 0 else ("divide", "multiply")
        out = apply_ufunc(rec, then, (apply_ufunc(rec, "rint", (apply_ufunc(
            rec, first, (x, scale)),)), scale))
    return astype(rec, out, dtype)


def real(rec: Recorder, val: Operand) -> Value:
    """The real part: the array itself unless it is complex."""
    x = rec.value(val)
    return rec.emit("real", [x]) if x.type.dtype.startswith("c") else x


def imag(rec: Recorder, val: Operand) -> Value:
    """The imaginary part: zeros of the array's dtype unless it is complex."""
    x = rec.value(val)
    if x.type.dtype.startswith("c"):
        return rec.emit("imag", [x])
    return rec.full(x.type.shape, x.type.dtype, 0)
