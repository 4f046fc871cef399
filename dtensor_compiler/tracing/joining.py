"""Joining and splitting: concatenate, stack, hstack, vstack, split, array_split, roll, pad.

Joins are one ``concatenate`` op (``stack`` first gives every operand a new size-1 dim with
``reshape``); splits are one ``slice`` op per part. ``roll`` joins the two slices of each rolled
axis in swapped order, ``pad`` (constant mode) joins ``full`` blocks on either side of each
padded axis; either way that axis is replicated, the others keep their layout.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import numpy as np

from dtensor_compiler.errors import ShapeError, UnsupportedOperationError
from dtensor_compiler.ir.core import Value
from dtensor_compiler.ir.types import numpy_dtype
from dtensor_compiler.tracing.indexing import slice_along
from dtensor_compiler.tracing.location import user_location
from dtensor_compiler.tracing.recorder import Operand, Recorder
from dtensor_compiler.tracing.shape_ops import (
    at_least,
    expand_dims,
    normalize_axis,
    ravel,
    reshape,
)


def concatenate(rec: Recorder, arrays: Sequence[Operand], axis: int | None = 0) -> Value:
    """Join along `axis` (None: join the flattened arrays)."""
    values = [rec.value(x) for x in arrays]
    if not values:
        raise ShapeError("need at least one array to concatenate", user_location())
    if axis is None:
        values, axis = [ravel(rec, v) for v in values], 0
    ranks = {v.type.rank for v in values}
    if len(ranks) != 1 or 0 in ranks:
        raise ShapeError("concatenate needs arrays of one rank, at least 1, got shapes "
                         + ", ".join(str(list(v.type.shape)) for v in values), user_location())
    axis = normalize_axis(axis, values[0].type.rank)
    if len(values) == 1:
        return values[0]
    return rec.emit("concatenate", values, {"axis": axis})


def stack(rec: Recorder, arrays: Sequence[Operand], axis: int = 0) -> Value:
    """Join along a new dim `axis`; every array must have the same shape."""
    values = [rec.value(x) for x in arrays]
    if not values:
        raise ShapeError("need at least one array to stack", user_location())
    if len({v.type.shape for v in values}) > 1:
        raise ShapeError("all input arrays must have the same shape, got "
                         + ", ".join(str(list(v.type.shape)) for v in values), user_location())
    axis = normalize_axis(axis, values[0].type.rank + 1)
    return concatenate(rec, [expand_dims(rec, v, axis) for v in values], axis)


def hstack(rec: Recorder, tup: Sequence[Operand]) -> Value:
    values = [at_least(rec, x, 1) for x in tup]
    return concatenate(rec, values, 0 if all(v.type.rank == 1 for v in values) else 1)


def vstack(rec: Recorder, tup: Sequence[Operand]) -> Value:
    return concatenate(rec, [at_least(rec, x, 2) for x in tup], 0)


def array_split(rec: Recorder, ary: Operand, indices_or_sections: int | Sequence[int],
                axis: int = 0) -> list[Value]:
    """numpy's ``array_split``: n parts (the first ``size % n`` one element longer), or the
    parts between the given indices (Python slice bounds: negative counts from the end)."""
    x = rec.value(ary)
    axis = normalize_axis(axis, x.type.rank)
    size = x.type.shape[axis]
    if isinstance(indices_or_sections, int):
        n = indices_or_sections
        if n <= 0:
            raise ShapeError("number sections must be larger than 0", user_location())
        sizes = [size // n + 1] * (size % n) + [size // n] * (n - size % n)
        bounds = [sum(sizes[:i]) for i in range(n + 1)]
    else:
        bounds = [0, *indices_or_sections, size]
    parts = []
    for start, stop in zip(bounds[:-1], bounds[1:]):
        begin, end, _ = slice(start, stop).indices(size)
        parts.append(slice_along(rec, x, axis, begin, max(begin, end)))
    return parts


def split(rec: Recorder, ary: Operand, indices_or_sections: int | Sequence[int],
          axis: int = 0) -> list[Value]:
    """Like `array_split`, but n sections must divide the axis evenly."""
    x = rec.value(ary)
    if isinstance(indices_or_sections, int):
        size = x.type.shape[normalize_axis(axis, x.type.rank)]
        if indices_or_sections <= 0 or size % indices_or_sections:
            raise ShapeError(f"array split does not result in an equal division: {size} into "
                             f"{indices_or_sections}", user_location())
    return array_split(rec, x, indices_or_sections, axis)


def roll(rec: Recorder, a: Operand, shift: int | Sequence[int],
         axis: int | Sequence[int] | None = None) -> Value:
    """Shift the elements by `shift` along `axis` (None: of the flattened array, reshaped
    back), wrapping around; several shifts and axes broadcast against each other."""
    x = rec.value(a)
    if axis is None:
        return reshape(rec, roll(rec, ravel(rec, x), shift, 0), x.type.shape)
    try:
        pairs = np.broadcast(np.asarray(shift), np.asarray(axis))
    except ValueError as e:
        raise ShapeError(f"numpy.roll: {e}", user_location()) from None
    if pairs.ndim > 1:
        raise ShapeError("numpy.roll: 'shift' and 'axis' should be scalars or 1D sequences",
                         user_location())
    total: dict[int, int] = {}
    for k, ax in pairs:
        ax = normalize_axis(int(ax), x.type.rank)
        total[ax] = total.get(ax, 0) + int(k)
    for ax, k in total.items():
        size = x.type.shape[ax]
        k = k % size if size else 0
        if k:
            x = concatenate(rec, [slice_along(rec, x, ax, size - k, size),
                                  slice_along(rec, x, ax, 0, size - k)], ax)
    return x


def _as_pairs(name: str, value: object, rank: int, index: bool) -> list[tuple[object, object]]:
    """numpy's reading of a pad width or value: one number, one (before, after) pair, or a
    pair per axis."""
    x = np.asarray(value)
    if index:
        if x.dtype.kind not in "iu":
            raise ShapeError(f"numpy.pad: `{name}` must be of integral type.", user_location())
        if (x < 0).any():
            raise ShapeError(f"numpy.pad: `{name}` can't contain negative values",
                             user_location())
    try:
        if x.size == 1:
            x = np.broadcast_to(x.reshape(1, 1), (rank, 2))
        elif x.size == 2 and x.shape != (2, 1):
            x = np.broadcast_to(x.reshape(1, 2), (rank, 2))
        else:
            x = np.broadcast_to(x, (rank, 2))
    except ValueError:
        raise ShapeError(f"numpy.pad: `{name}` of shape {list(np.asarray(value).shape)} cannot be "
                         f"broadcast to (before, after) pairs for {rank} axes",
                         user_location()) from None
    return [(x[i, 0], x[i, 1]) for i in range(rank)]


def pad(rec: Recorder, array: Operand, pad_width: object, mode: str = "constant",
        **kwargs: object) -> Value:
    """``np.pad`` in constant mode: each axis in turn gets `constant_values` (converted to the
    array's dtype as numpy's assignment does) before and after it, so later axes fill the
    corners, as in numpy."""
    x = rec.value(array)
    if mode != "constant":
        raise UnsupportedOperationError(f"numpy.pad with mode={mode!r} is not supported (only "
                                        "mode='constant')", user_location())
    unknown = sorted(set(kwargs) - {"constant_values"})
    if unknown:
        raise UnsupportedOperationError(f"numpy.pad in constant mode does not take {unknown}",
                                        user_location())
    values = kwargs.get("constant_values", 0)
    if isinstance(values, Value):
        raise UnsupportedOperationError("numpy.pad with traced constant_values is not "
                                        "supported", user_location())
    rank = x.type.rank
    widths = _as_pairs("pad_width", pad_width, rank, index=True)
    fills = _as_pairs("constant_values", values, rank, index=False)
    for ax, (width, fill) in enumerate(zip(widths, fills)):
        before, after = (_block(rec, x, ax, operator.index(w), v)  # type: ignore[arg-type]
                         for w, v in zip(width, fill))
        x = concatenate(rec, [p for p in (before, x, after) if p is not None], ax)
    return x


def _block(rec: Recorder, x: Value, axis: int, width: int, fill: object) -> Value | None:
    """`width` elements of `fill` along `axis`, else `x`'s shape; None for no elements."""
    if not width:
        return None
    cell = np.empty((), numpy_dtype(x.type.dtype))
    try:
        cell[()] = fill  # numpy's assignment into the padded array
    except (OverflowError, TypeError, ValueError) as e:
        raise ShapeError(f"numpy.pad: constant_values: {e}", user_location()) from None
    shape = x.type.shape[:axis] + (width,) + x.type.shape[axis + 1:]
    return rec.full(shape, x.type.dtype, cell.item())
