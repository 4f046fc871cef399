"""``numpy.linalg.norm``, composed as numpy computes it.

Integers and bool are first made f64. With no axis (and the default order, or ``'fro'`` on a
matrix, or 2 on a vector) the norm is ``sqrt(sum(x * x))`` over every dim (``conj(x) * x`` for
complex), the value of numpy's ``sqrt(dot(ravel, ravel))`` summed in another order, without a
ravel: a sharded array, however it is sharded, leaves one pending sum, reduced once before the
square root. Vector norms along one axis and the matrix norms ``None``/``'fro'``, 1, -1,
inf and -inf along two are sums, maxima and minima of ``abs(x)`` (``conj(x) * x`` for the
2-norm), so a sharded reduced axis leaves a pending reduction too. The norms that need a
singular value decomposition (matrix orders 2, -2 and ``'nuc'``) are not supported.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dtensor_compiler.errors import ShapeError, UnsupportedOperationError
from dtensor_compiler.ir.core import Value
from dtensor_compiler.ir.types import numpy_dtype
from dtensor_compiler.tracing.elementwise import apply_ufunc, astype, real
from dtensor_compiler.tracing.location import user_location
from dtensor_compiler.tracing.recorder import Operand, Recorder
from dtensor_compiler.tracing.reductions import reduce
from dtensor_compiler.tracing.shape_ops import normalize_axis, reshape

Order = int | float | str | None


def _squares(rec: Recorder, x: Value) -> Value:
    """``(x.conj() * x).real``: ``x * x`` for real `x`."""
    if not x.type.dtype.startswith("c"):
        return apply_ufunc(rec, "multiply", (x, x))
    return real(rec, apply_ufunc(rec, "multiply", (apply_ufunc(rec, "conjugate", (x,)), x)))


def _is(ord: Order, value: object) -> bool:
    return not isinstance(ord, str) and ord is not None and ord == value


def norm(rec: Recorder, x: Operand, ord: Order = None, axis: int | Sequence[int] | None = None,
         keepdims: bool = False) -> Value:
    v = rec.value(x)
    if numpy_dtype(v.type.dtype).kind in "biu":
        v = astype(rec, v, np.float64)
    rank = v.type.rank
    if axis is None and (ord is None or (ord in ("f", "fro") and rank == 2)
                         or (_is(ord, 2) and rank == 1)):
        return apply_ufunc(rec, "sqrt", (reduce(rec, "sum", _squares(rec, v), None,
                                                keepdims=bool(keepdims)),))
    axes = tuple(range(rank)) if axis is None else (
        (int(axis),) if isinstance(axis, (int, np.integer)) else tuple(int(a) for a in axis))
    axes = tuple(normalize_axis(a, rank) for a in axes)
    if len(axes) == 1:
        return _vector_norm(rec, v, ord, axes, bool(keepdims))
    if len(axes) == 2:
        return _matrix_norm(rec, v, ord, axes, bool(keepdims))
    raise ShapeError("numpy.linalg.norm: improper number of dimensions to norm",
                     user_location())


def _vector_norm(rec: Recorder, x: Value, ord: Order, axes: tuple[int, ...], keepdims: bool
                 ) -> Value:
    if ord is None or _is(ord, 2):
        return apply_ufunc(rec, "sqrt", (reduce(rec, "sum", _squares(rec, x), axes,
                                                keepdims=keepdims),))
    if isinstance(ord, str):
        raise ShapeError(f"numpy.linalg.norm: invalid norm order {ord!r} for vectors",
                         user_location())
    magnitude = apply_ufunc(rec, "absolute", (x,))
    if ord == np.inf:
        return reduce(rec, "max", magnitude, axes, keepdims=keepdims)
    if ord == -np.inf:
        return reduce(rec, "min", magnitude, axes, keepdims=keepdims)
    if ord == 0:
        nonzero = astype(rec, apply_ufunc(rec, "not_equal", (x, 0)), numpy_dtype(
            magnitude.type.dtype))
        return reduce(rec, "sum", nonzero, axes, keepdims=keepdims)
    if ord == 1:
        return reduce(rec, "sum", magnitude, axes, keepdims=keepdims)
    powers = astype(rec, apply_ufunc(rec, "power", (magnitude, ord)),  # numpy's `absx **= ord`
                    numpy_dtype(magnitude.type.dtype))
    total = reduce(rec, "sum", powers, axes, keepdims=keepdims)
    inverse = np.reciprocal(ord, dtype=numpy_dtype(total.type.dtype))
    return apply_ufunc(rec, "power", (total, rec.constant(inverse)))


def _matrix_norm(rec: Recorder, x: Value, ord: Order, axes: tuple[int, ...], keepdims: bool
                 ) -> Value:
    row, col = axes
    if row == col:
        raise ShapeError("numpy.linalg.norm: duplicate axes given", user_location())
    if ord in (None, "fro", "f"):
        out = apply_ufunc(rec, "sqrt", (reduce(rec, "sum", _squares(rec, x), axes),))
    elif _is(ord, 2) or _is(ord, -2) or ord == "nuc":
        raise UnsupportedOperationError(f"numpy.linalg.norm with ord={ord!r} on matrices (a "
                                        "singular value decomposition) is not supported",
                                        user_location())
    elif _is(ord, 1) or _is(ord, -1) or _is(ord, np.inf) or _is(ord, -np.inf):
        summed, then = (row, col) if _is(ord, 1) or _is(ord, -1) else (col, row)
        if then > summed:
            then -= 1
        sums = reduce(rec, "sum", apply_ufunc(rec, "absolute", (x,)), summed)
        out = reduce(rec, "max" if _is(ord, 1) or _is(ord, np.inf) else "min", sums, then)
    else:
        raise ShapeError(f"numpy.linalg.norm: invalid norm order {ord!r} for matrices",
                         user_location())
    if keepdims:
        out = reshape(rec, out, tuple(1 if i in axes else s for i, s in enumerate(x.type.shape)))
    return out
