"""Reductions: sum/prod/max/min, mean, var/std, argmax/argmin, as numpy defines them.

``sum``, ``prod``, ``max`` and ``min`` are single ``reduce_*`` ops. ``mean`` is a ``reduce_sum``
divided by the element count, accumulated in the dtype numpy uses (f64 for integers and bool,
f32 for f16, whose result is cast back). ``var`` is the mean of squared deviations from the
mean, divided by ``count - ddof``; ``std`` its square root. ``argmax``/``argmin`` of real values
are the extreme (a ``reduce_max``/``reduce_min``) and then the least index holding it (a
``reduce_min``), so a sharded axis is reduced in two small exchanges; with no axis they work on
the flattened array, like numpy. ``cumsum`` (and ``np.add.accumulate``) is one
``cumsum`` op, ``cumprod`` (and ``np.multiply.accumulate``) one ``cumprod`` op, with the same
treatment of a requested dtype as ``sum``. ``any`` and ``all`` are ``reduce_max`` and
``reduce_min`` of the operand tested for non-zero (a sharded reduced axis leaves a pending
``max``/``min`` on bool: an ``or``/``and``); over no elements they are the constant numpy gives.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from math import prod

import numpy as np
from numpy.typing import DTypeLike

from dtensor_compiler.errors import ShapeError, UnsupportedOperationError
from dtensor_compiler.ir.core import Value
from dtensor_compiler.ir.inference import reduced_shape
from dtensor_compiler.ir.types import TensorType, is_floating, numpy_dtype
from dtensor_compiler.tracing.elementwise import apply_ufunc, astype, where
from dtensor_compiler.tracing.location import user_location
from dtensor_compiler.tracing.recorder import Operand, Recorder
from dtensor_compiler.tracing.shape_ops import normalize_axis, reshape

Axis = int | Sequence[int] | None


def normalize_axes(axis: Axis, rank: int) -> tuple[int, ...]:
    """Sorted, non-negative axes; None means all of them."""
    if axis is None:
        return tuple(range(rank))
    raw = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    axes = tuple(sorted(normalize_axis(int(a), rank) for a in raw))
    if len(set(axes)) != len(axes):
        raise ShapeError(f"duplicate value in 'axis': {list(raw)}", user_location())
    return axes


def reduce(rec: Recorder, kind: str, a: Operand, axis: Axis = None, dtype: DTypeLike | None = None,
           keepdims: bool = False) -> Value:
    """``reduce_<kind>`` (sum, prod, max, min) of `a` over `axis`, accumulated in `dtype`.

    ``reduce_sum`` and ``reduce_prod`` widen small integers and bool to int64 as numpy's
    default does; a requested narrower `dtype` is the wide result cast back, which wraps (and
    for bool, tests for non-zero) exactly as accumulating in `dtype` does."""
    x = rec.value(a)
    if dtype is not None:
        x = astype(rec, x, dtype)
    axes = normalize_axes(axis, x.type.rank)
    if kind in ("max", "min") and any(x.type.shape[i] == 0 for i in axes):
        name = "maximum" if kind == "max" else "minimum"
        raise ShapeError(f"zero-size array to reduction operation {name} which has no "
                         "identity (numpy refuses it)", user_location())
    out = rec.emit(f"reduce_{kind}", [x], {"axes": axes, "keepdims": bool(keepdims)})
    return out if dtype is None else astype(rec, out, dtype)


def _count(x: Value, axes: tuple[int, ...]) -> int:
    return prod(x.type.shape[i] for i in axes)


def _divide_in_place(rec: Recorder, total: Value, count: int | float) -> Value:
    """``total / count`` keeping `total`'s dtype, as numpy's ``true_divide(..., out=total)``
    by its count (an ``intp``), which divides in float64: where `total`'s dtype does not
    hold the count exactly (a float16 sum of more than 2048 items, or more than 65504,
    whose count is inf there), so does this; elsewhere dividing in that dtype rounds alike."""
    dtype = numpy_dtype(total.type.dtype)
    with np.errstate(over="ignore"):
        exact = np.asarray(count, dtype=dtype).astype(np.complex128).item() == count
    wide = total if exact else astype(rec, total, np.float64)
    return astype(rec, apply_ufunc(rec, "divide", (wide, count)), dtype)


def _accumulator(x: Value, dtype: DTypeLike | None) -> DTypeLike | None:
    """The dtype numpy's mean and var sum in: the requested one, else f64 for integers and bool."""
    if dtype is not None:
        return dtype
    return np.float64 if numpy_dtype(x.type.dtype).kind in "biu" else None


def mean(rec: Recorder, a: Operand, axis: Axis = None, dtype: DTypeLike | None = None,
         keepdims: bool = False) -> Value:
    x = rec.value(a)
    acc = _accumulator(x, dtype)
    half = acc is None and x.type.dtype == "f16"
    total = reduce(rec, "sum", x, axis, np.float32 if half else acc, keepdims)
    out = _divide_in_place(rec, total, _count(x, normalize_axes(axis, x.type.rank)))
    return astype(rec, out, np.float16) if half else out


def var(rec: Recorder, a: Operand, axis: Axis = None, dtype: DTypeLike | None = None,
        ddof: int | float = 0, keepdims: bool = False) -> Value:
    x = rec.value(a)
    if numpy_dtype(x.type.dtype).kind == "c":
        raise UnsupportedOperationError("var/std of complex arrays is not supported",
                                        user_location())
    acc = _accumulator(x, dtype)
    count = _count(x, normalize_axes(axis, x.type.rank))
    centre = _divide_in_place(rec, reduce(rec, "sum", x, axis, acc, keepdims=True), count)
    deviation = apply_ufunc(rec, "subtract", (x, centre))
    squares = apply_ufunc(rec, "multiply", (deviation, deviation))
    total = reduce(rec, "sum", squares, axis, acc, keepdims)
    return _divide_in_place(rec, total, max(count - ddof, 0))


def std(rec: Recorder, a: Operand, axis: Axis = None, dtype: DTypeLike | None = None,
        ddof: int | float = 0, keepdims: bool = False) -> Value:
    """numpy's std: with an integer `dtype` the variance is of that dtype, and its square
    root goes back into it, which numpy refuses for an array (float64 does not cast to it
    in place) and truncates for a scalar."""
    variance = var(rec, a, axis, dtype, ddof, keepdims)
    if dtype is None or np.dtype(dtype).kind not in "biu":
        return apply_ufunc(rec, "sqrt", (variance,))
    if variance.type.rank:
        raise ShapeError(f"numpy.std with dtype={np.dtype(dtype).name}: numpy takes the "
                         "square root into that dtype, and cannot cast float64 to it",
                         user_location())
    return astype(rec, apply_ufunc(rec, "sqrt", (variance,)), dtype)


def arg_reduce(rec: Recorder, kind: str, a: Operand, axis: int | None = None,
               keepdims: bool = False) -> Value:
    """``argmax``/``argmin`` (`kind`) along `axis`; None means over the flattened array."""
    x = rec.value(a)
    if x.type.size == 0 and (axis is None or x.type.shape[normalize_axis(int(axis),
                                                                         x.type.rank)] == 0):
        raise ShapeError(f"attempt to get {kind} of an empty sequence (numpy refuses it)",
                         user_location())
    if axis is None:
        flat = reshape(rec, x, (x.type.size,))
        index = arg_reduce(rec, kind, flat, 0)
        return reshape(rec, index, (1,) * x.type.rank) if keepdims else index
    axis = normalize_axis(int(axis), x.type.rank)
    dtype = numpy_dtype(x.type.dtype)
    if dtype.kind == "c" or x.type.shape[axis] < 2:  # no order to reduce by; nothing to pick
        return rec.emit(kind, [x], {"axis": axis, "keepdims": bool(keepdims)})
    return _first_index_of_extreme(rec, kind, x, axis, bool(keepdims))


def _first_index_of_extreme(rec: Recorder, kind: str, x: Value, axis: int, keepdims: bool
                            ) -> Value:
    """``argmax``/``argmin`` as the extreme value, then the least index holding it (a NaN,
    which the extreme propagates, counts as holding it: numpy returns the first NaN). Both
    are reductions, so a sharded axis costs two exchanges of the result's size (the local
    extremes, then the local first indices) instead of gathering the input."""
    extreme = rec.emit("reduce_max" if kind == "argmax" else "reduce_min", [x],
                       {"axes": (axis,), "keepdims": True})
    hit = apply_ufunc(rec, "equal", (x, extreme))
    if is_floating(numpy_dtype(x.type.dtype)):  # ml_dtypes' floats included
        hit = apply_ufunc(rec, "logical_or", (hit, apply_ufunc(rec, "isnan", (x,))))
    size = x.type.shape[axis]
    counting = tuple(size if k == axis else 1 for k in range(x.type.rank))
    index = rec.emit("iota", [], {"dimension": axis}, TensorType("i64", counting))
    candidates = where(rec, hit, index, size)
    return rec.emit("reduce_min", [candidates], {"axes": (axis,), "keepdims": keepdims})


def logical_reduce(rec: Recorder, kind: str, a: Operand, axis: Axis = None,
                   keepdims: bool = False) -> Value:
    """``np.any`` (`kind` ``"any"``) or ``np.all`` of `a` over `axis`."""
    x = astype(rec, rec.value(a), np.bool_)
    axes = normalize_axes(axis, x.type.rank)
    if _count(x, axes) == 0:  # numpy's identities: nothing is true of none, all of none
        return rec.full(reduced_shape(x.type.shape, axes, bool(keepdims)), "bool", kind == "all")
    return rec.emit("reduce_max" if kind == "any" else "reduce_min", [x],
                    {"axes": axes, "keepdims": bool(keepdims)})


def cumsum(rec: Recorder, a: Operand, axis: int | None = None, dtype: DTypeLike | None = None
           ) -> Value:
    """Prefix sums along `axis` (None: of the flattened array; a 0-d array is scanned as its
    one-element ravel, as numpy does), accumulated in `dtype`: a requested dtype is the wide
    result cast back, which wraps exactly as accumulating in it does."""
    return _scan(rec, "cumsum", a, axis, dtype)


def cumprod(rec: Recorder, a: Operand, axis: int | None = None, dtype: DTypeLike | None = None
            ) -> Value:
    """Prefix products, as `cumsum` (a product wraps in a narrow dtype as it does in int64)."""
    return _scan(rec, "cumprod", a, axis, dtype)


def _scan(rec: Recorder, name: str, a: Operand, axis: int | None, dtype: DTypeLike | None
          ) -> Value:
    x = rec.value(a)
    if axis is None or x.type.rank == 0:
        x = reshape(rec, x, (x.type.size,))
        axis = 0 if axis is None else axis
    if dtype is not None:
        x = astype(rec, x, dtype)
    out = rec.emit(name, [x], {"axis": normalize_axis(_integer(axis), x.type.rank)})
    return out if dtype is None else astype(rec, out, dtype)


def accumulate(rec: Recorder, array: Operand, axis: int | None = 0,
               dtype: DTypeLike | None = None, *, ufunc: str = "add") -> Value:
    """``np.add.accumulate`` (`cumsum`) or ``np.multiply.accumulate`` (`cumprod`) along one
    axis (numpy widens small integers and bool here too), refusing what numpy refuses."""
    x = rec.value(array)
    if x.type.rank == 0:
        raise ShapeError(f"numpy.{ufunc}.accumulate: cannot accumulate on a scalar",
                         user_location())
    if axis is None and x.type.rank > 1:
        raise ShapeError(f"numpy.{ufunc}.accumulate: accumulate does not allow multiple axes",
                         user_location())
    return _scan(rec, "cumsum" if ufunc == "add" else "cumprod", x, 0 if axis is None else axis,
                 dtype)


def _integer(axis: object) -> int:
    try:
        return operator.index(axis)  # type: ignore[arg-type]
    except TypeError as e:
        raise ShapeError(f"axis: {e}", user_location()) from None


_SORT_KINDS = {None: "quicksort", "quicksort": "quicksort", "heapsort": "heapsort",
               "stable": "stable", "mergesort": "stable"}
"""numpy's sort kinds by the names it takes (``mergesort`` is ``stable``)."""


def sort_along(rec: Recorder, a: Operand, axis: int | None = -1, kind: str | None = None,
               order: object = None, *, stable: bool | None = None, name: str) -> Value:
    """``np.sort`` (`name` ``"sort"``) or ``np.argsort`` along `axis` (None: of the flattened
    array), with numpy's `kind` (it decides the order of ties)."""
    if order is not None:
        raise UnsupportedOperationError(f"numpy.{name} with order= (structured arrays) is not "
                                        "supported", user_location())
    if kind not in _SORT_KINDS:
        raise UnsupportedOperationError(f"numpy.{name} with kind={kind!r} is not supported "
                                        f"(kinds: {[k for k in _SORT_KINDS if k]})",
                                        user_location())
    if stable is not None and kind is not None:
        raise ShapeError(f"numpy.{name}: `kind` and `stable` parameters can't be provided at "
                         "the same time", user_location())
    x = rec.value(a)
    if axis is None:
        x, axis = reshape(rec, x, (x.type.size,)), 0
    chosen = "stable" if stable else _SORT_KINDS[kind]
    return rec.emit(name, [x], {"axis": normalize_axis(_integer(axis), x.type.rank),
                                "kind": chosen})
