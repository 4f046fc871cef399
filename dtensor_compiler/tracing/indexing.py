"""Indexing: numpy's basic slicing as ``slice`` + ``reshape``, and integer-array gathers as
``take``.

Basic indexing takes ints, slices, ``...`` and ``None``: one ``slice`` op keeps the selected
ranges (a negative-step slice selects its elements in increasing order), one ``reverse`` op
puts the negative-step dims back in the order asked for, one ``take`` of a 0-d index per int
(so that on a sharded dim only the owner of the element gives it: a pending sum of the
result's size, not a gather), then one ``reshape`` inserts the ``None`` dims. An integer index array
(traced or constant) on one axis, with only ``:`` or ``...`` elsewhere, is an embedding
lookup: ``take``. Boolean masks (whose result shape depends on the data) and other advanced
indexing are rejected.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dtensor_compiler.errors import ShapeError, UnsupportedOperationError
from dtensor_compiler.ir.core import Value
from dtensor_compiler.tracing.location import user_location
from dtensor_compiler.tracing.recorder import Operand, Recorder
from dtensor_compiler.tracing.shape_ops import normalize_axis, ravel, reshape, reverse

_FULL = slice(None)


def slice_dims(rec: Recorder, x: Value, starts: Sequence[int], stops: Sequence[int],
               steps: Sequence[int]) -> Value:
    """The ``slice`` op, or `x` itself when every dim is kept whole."""
    if all((b, e, k) == (0, s, 1) for b, e, k, s in zip(starts, stops, steps, x.type.shape)):
        return x
    return rec.emit("slice", [x], {"start": tuple(starts), "stop": tuple(stops),
                                   "step": tuple(steps)})


def slice_along(rec: Recorder, x: Value, axis: int, start: int, stop: int) -> Value:
    """``x[..., start:stop, ...]`` on `axis`."""
    starts = [0] * x.type.rank
    stops = list(x.type.shape)
    starts[axis], stops[axis] = start, stop
    return slice_dims(rec, x, starts, stops, [1] * x.type.rank)


def _is_array_index(k: object) -> bool:
    return isinstance(k, (Value, np.ndarray, list))


def _is_int_index(k: object) -> bool:
    return isinstance(k, (int, np.integer)) and not isinstance(k, (bool, np.bool_))


def _expand_ellipsis(items: tuple, rank: int) -> list:
    """`items` with ``...`` replaced by enough ``:`` to index every dim of a rank-`rank` array."""
    consumed = sum(1 for k in items if k is not None and k is not Ellipsis)
    if consumed > rank:
        raise ShapeError(f"too many indices for array: array is {rank}-dimensional, but "
                         f"{consumed} were indexed", user_location())
    ellipses = [i for i, k in enumerate(items) if k is Ellipsis]
    if len(ellipses) > 1:
        raise ShapeError("an index can only have a single ellipsis ('...')", user_location())
    fill = [_FULL] * (rank - consumed)
    if ellipses:
        i = ellipses[0]
        return list(items[:i]) + fill + list(items[i + 1:])
    return list(items) + fill


def getitem(rec: Recorder, x: Value, key: object) -> Value:
    """``x[key]``."""
    items = _expand_ellipsis(key if isinstance(key, tuple) else (key,), x.type.rank)
    if any(_is_array_index(k) for k in items):
        return _advanced(rec, x, items)
    starts: list[int] = []
    stops: list[int] = []
    steps: list[int] = []
    shape: list[int] = []
    reversed_dims: list[int] = []
    picks: list[tuple[int, int]] = []
    dims = iter(x.type.shape)
    for k in items:
        if k is None:
            shape.append(1)
            continue
        size = next(dims)
        if _is_int_index(k):
            if not -size <= k < size:
                raise ShapeError(f"index {k} is out of bounds for axis {len(starts)} with "
                                 f"size {size}", user_location())
            picks.append((len(starts), int(k) % size))
            starts.append(0)
            stops.append(size)
            steps.append(1)
        elif isinstance(k, slice):
            if k.step is not None and k.step == 0:
                raise ShapeError("slice step cannot be zero", user_location())
            start, stop, step = k.indices(size)
            picked = range(start, stop, step)
            if step < 0 and picked:  # the same elements in increasing order, then reversed
                reversed_dims.append(len(starts))
                start, stop, step = picked[-1], picked[0] + 1, -step
            elif step < 0:
                start, stop, step = 0, 0, 1
            starts.append(start)
            stops.append(max(start, stop))
            steps.append(step)
            shape.append(len(picked))
        else:
            raise UnsupportedOperationError(f"indexing with {type(k).__name__} ({k!r}) is not "
                                            "supported", user_location())
    out = reverse(rec, slice_dims(rec, x, starts, stops, steps), reversed_dims)
    for taken, (axis, index) in enumerate(picks):  # major first: each take drops its dim
        out = rec.emit("take", [out, rec.constant(np.asarray(index, np.int64))],
                       {"axis": axis - taken})
    return reshape(rec, out, tuple(shape))


def _is_bool_array(k: object) -> bool:
    if isinstance(k, Value):
        return k.type.dtype == "bool"
    return _is_array_index(k) and np.asarray(k).dtype == np.bool_


def _advanced(rec: Recorder, x: Value, items: list) -> Value:
    if any(_is_bool_array(k) for k in items):
        raise UnsupportedOperationError(
            "boolean mask indexing is not supported: its result shape depends on the data "
            "(use np.where instead)", user_location())
    arrays = [i for i, k in enumerate(items) if _is_array_index(k)]
    if len(arrays) != 1 or any(k != _FULL for i, k in enumerate(items) if i != arrays[0]):
        raise UnsupportedOperationError(
            "advanced indexing is supported only as one integer index array with ':' on every "
            "other axis (a take)", user_location())
    return take(rec, x, items[arrays[0]], axis=arrays[0])


def take(rec: Recorder, a: Operand, indices: Operand, axis: int | None = None) -> Value:
    """``np.take``: gather along `axis` (None: from the flattened array). Constant indices
    are checked against the axis size and negative ones wrapped, as numpy does."""
    table = rec.value(a)
    if axis is None:
        table, axis = ravel(rec, table), 0
    axis = normalize_axis(int(axis), table.type.rank)
    if isinstance(indices, Value):
        return rec.emit("take", [table, indices], {"axis": axis})
    idx = np.asarray(indices)
    if idx.size == 0 and idx.dtype.kind == "f":  # an empty list: numpy takes nothing
        idx = idx.astype(np.int64)
    if idx.dtype.kind not in "iu":
        raise ShapeError(f"take indices must be integers, got {idx.dtype}", user_location())
    size = table.type.shape[axis]
    outside = idx[(idx < -size) | (idx >= size)]
    if outside.size:
        raise ShapeError(f"index {outside.flat[0]} is out of bounds for axis {axis} with size "
                         f"{size}", user_location())
    wrapped = np.mod(idx, size) if idx.size else idx
    return rec.emit("take", [table, rec.constant(wrapped)], {"axis": axis})
