"""Array creation inside a traced function: ``full`` and ``iota`` ops.

``zeros_like``/``ones_like``/``full_like``/``empty_like`` on a traced array, and ``zeros``,
``ones``, ``full``, ``empty`` and ``arange`` called with ``like=`` a traced array, become
``full`` ops (``empty`` is zeros, so traces are deterministic). ``arange`` is
``start + iota * step`` in numpy's dtype for it, with numpy's own start and step (the first
element and the difference of the first two). ``triu``/``tril`` keep the elements on one side
of a diagonal with ``where`` on a mask compared from two ``iota``s, which can be made in any
layout, so the array keeps its own. Without a traced argument numpy runs these
itself and the result is a captured constant. `order` and `device` change no value and are
accepted and ignored.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import DTypeLike

from dtensor_compiler.errors import ShapeError, TraceError
from dtensor_compiler.ir.core import Value
from dtensor_compiler.ir.types import TensorType, numpy_dtype
from dtensor_compiler.tracing.elementwise import apply_ufunc, astype, where
from dtensor_compiler.tracing.location import user_location
from dtensor_compiler.tracing.recorder import Operand, Recorder, ir_dtype
from dtensor_compiler.tracing.shape_ops import ShapeLike, broadcast_to

_Ignored = object
_Bound = float | np.integer | np.floating | Value
"""A bound or step of ``arange``: a number (a traced one is rejected)."""


def _shape(shape: ShapeLike) -> tuple[int, ...]:
    return (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(s) for s in shape)


def full(rec: Recorder, shape: ShapeLike, fill_value: Operand, dtype: DTypeLike | None = None,
         order: _Ignored = "C", device: _Ignored = None) -> Value:
    """`shape` filled with `fill_value` (a number, or an array broadcast to `shape`)."""
    if isinstance(fill_value, Value) or np.ndim(fill_value) > 0:
        fill = rec.value(fill_value)
        fill = astype(rec, fill, numpy_dtype(fill.type.dtype) if dtype is None else dtype)
        return broadcast_to(rec, fill, _shape(shape))
    target = ir_dtype(np.asarray(fill_value).dtype if dtype is None else dtype)
    return rec.full(_shape(shape), target, fill_value)


def zeros(rec: Recorder, shape: ShapeLike, dtype: DTypeLike | None = float, order: _Ignored = "C",
          device: _Ignored = None) -> Value:
    return full(rec, shape, 0, np.float64 if dtype is None else dtype)


def ones(rec: Recorder, shape: ShapeLike, dtype: DTypeLike | None = float, order: _Ignored = "C",
         device: _Ignored = None) -> Value:
    return full(rec, shape, 1, np.float64 if dtype is None else dtype)


def _like(a: Operand, dtype: DTypeLike | None, shape: ShapeLike | None
          ) -> tuple[tuple[int, ...], DTypeLike | None]:
    if isinstance(a, Value):
        own_shape, own_dtype = a.type.shape, numpy_dtype(a.type.dtype)
    else:
        own_shape, own_dtype = np.shape(a), np.asarray(a).dtype
    return (own_shape if shape is None else _shape(shape),
            own_dtype if dtype is None else dtype)


def full_like(rec: Recorder, a: Operand, fill_value: Operand, dtype: DTypeLike | None = None,
              order: _Ignored = "K", subok: _Ignored = True, shape: ShapeLike | None = None,
              device: _Ignored = None) -> Value:
    like_shape, like_dtype = _like(a, dtype, shape)
    return full(rec, like_shape, fill_value, like_dtype)


def zeros_like(rec: Recorder, a: Operand, dtype: DTypeLike | None = None, order: _Ignored = "K",
               subok: _Ignored = True, shape: ShapeLike | None = None,
               device: _Ignored = None) -> Value:
    return full_like(rec, a, 0, dtype, shape=shape)


def ones_like(rec: Recorder, a: Operand, dtype: DTypeLike | None = None, order: _Ignored = "K",
              subok: _Ignored = True, shape: ShapeLike | None = None,
              device: _Ignored = None) -> Value:
    return full_like(rec, a, 1, dtype, shape=shape)


def arange(rec: Recorder, start: _Bound, stop: _Bound | None = None, step: _Bound | None = None,
           dtype: DTypeLike | None = None, device: _Ignored = None) -> Value:
    if isinstance(start, Value) or isinstance(stop, Value) or isinstance(step, Value):
        raise TraceError("numpy.arange with traced bounds has a data-dependent length",
                         user_location())
    reference = np.arange(start, stop, step, dtype=dtype)
    target = ir_dtype(reference.dtype)
    if reference.size <= 1:
        return rec.constant(reference)
    out = rec.emit("iota", [], {"dimension": 0}, TensorType(target, reference.shape))
    first, delta = reference[0].item(), (reference[1] - reference[0]).item()
    if delta != 1:
        out = apply_ufunc(rec, "multiply", (out, rec.full((), target, delta)))
    if first != 0:
        out = apply_ufunc(rec, "add", (out, rec.full((), target, first)))
    return out


def _triangle(rec: Recorder, m: Operand, k: int, upper: bool) -> Value:
    """`m` (a stack of matrices; a vector is the rows of a square matrix, as in numpy) with
    zeros below diagonal `k` (`upper`) or above it."""
    x = rec.value(m)
    name = "triu" if upper else "tril"
    if x.type.rank == 0:
        raise ShapeError(f"numpy.{name} needs an array of at least one dim", user_location())
    rows, cols = x.type.shape[-2:] if x.type.rank >= 2 else x.type.shape * 2
    row = rec.emit("iota", [], {"dimension": 0}, TensorType("i64", (rows, cols)))
    col = rec.emit("iota", [], {"dimension": 1}, TensorType("i64", (rows, cols)))
    offset = apply_ufunc(rec, "subtract", (col, row))
    keep = apply_ufunc(rec, "greater_equal" if upper else "less_equal", (offset, int(k)))
    return where(rec, keep, x, rec.full((), x.type.dtype, 0))


def triu(rec: Recorder, m: Operand, k: int = 0) -> Value:
    return _triangle(rec, m, k, upper=True)


def tril(rec: Recorder, m: Operand, k: int = 0) -> Value:
    return _triangle(rec, m, k, upper=False)
