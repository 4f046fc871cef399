"""Joining and splitting: concatenate, stack, hstack, vstack, split, array_split.

Joins are one ``concatenate`` op (``stack`` first gives every operand a new size-1 dim with
``reshape``); splits are one ``slice`` op per part.
"""

from __future__ import annotations

from collections.abc import Sequence

from dtensor_compiler.errors import ShapeError
from dtensor_compiler.ir.core import Value
from dtensor_compiler.tracing.indexing import slice_along
from dtensor_compiler.tracing.location import user_location
from dtensor_compiler.tracing.recorder import Operand, Recorder
from dtensor_compiler.tracing.shape_ops import at_least, expand_dims, normalize_axis, ravel


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
