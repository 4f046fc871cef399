"""Shape manipulation: reshape, transpose and the numpy functions built from them.

``squeeze``, ``expand_dims``, ``ravel`` and ``flatten`` are ``reshape`` ops; ``swapaxes`` and
``moveaxis`` are ``transpose`` ops; ``flip`` is a ``reverse`` op. A call that leaves the shape
(or order) unchanged emits nothing and returns its operand.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from math import prod

import numpy as np

from dtensor_compiler.errors import ShapeError
from dtensor_compiler.ir.core import Value
from dtensor_compiler.ir.types import TensorType
from dtensor_compiler.tracing.location import user_location
from dtensor_compiler.tracing.recorder import Operand, Recorder

ShapeLike = int | Sequence[int]


def normalize_axis(axis: int, rank: int) -> int:
    """`axis` in ``[0, rank)``; numpy's negative axes count from the end."""
    if not -rank <= axis < rank:
        raise ShapeError(f"axis {axis} is out of bounds for an array of dimension {rank}",
                         user_location())
    return axis % rank


def _as_shape(shape: ShapeLike) -> tuple[int, ...]:
    if isinstance(shape, (int, np.integer)):
        return (int(shape),)
    return tuple(int(s) for s in shape)


def resolve_shape(shape: ShapeLike, size: int) -> tuple[int, ...]:
    """`shape` with its (at most one) -1 replaced so that it holds `size` elements."""
    dims = _as_shape(shape)
    unknown = [i for i, d in enumerate(dims) if d == -1]
    known = prod(d for d in dims if d != -1)
    if len(unknown) > 1 or any(d < -1 for d in dims):
        raise ShapeError(f"bad shape {dims}: only one dim may be -1 and none negative",
                         user_location())
    if unknown and known and size % known == 0:
        dims = dims[: unknown[0]] + (size // known,) + dims[unknown[0] + 1:]
    if -1 in dims or prod(dims) != size:
        raise ShapeError(f"cannot reshape array of size {size} into shape {dims}",
                         user_location())
    return dims


def reshape(rec: Recorder, a: Operand, shape: ShapeLike) -> Value:
    x = rec.value(a)
    target = resolve_shape(shape, x.type.size)
    if target == x.type.shape:
        return x
    return rec.emit("reshape", [x], result=TensorType(x.type.dtype, target))


def transpose(rec: Recorder, a: Operand, axes: Sequence[int] | None = None) -> Value:
    """Permute dims; no `axes` reverses them."""
    x = rec.value(a)
    rank = x.type.rank
    perm = tuple(reversed(range(rank))) if axes is None else tuple(
        normalize_axis(int(p), rank) for p in axes)
    if sorted(perm) != list(range(rank)):
        raise ShapeError(f"axes {list(perm)} are not a permutation of {rank} dims",
                         user_location())
    if perm == tuple(range(rank)):
        return x
    return rec.emit("transpose", [x], {"perm": perm})


def swapaxes(rec: Recorder, a: Operand, axis1: int, axis2: int) -> Value:
    x = rec.value(a)
    perm = list(range(x.type.rank))
    i, j = normalize_axis(axis1, x.type.rank), normalize_axis(axis2, x.type.rank)
    perm[i], perm[j] = perm[j], perm[i]
    return transpose(rec, x, perm)


def moveaxis(rec: Recorder, a: Operand, source: ShapeLike, destination: ShapeLike) -> Value:
    x = rec.value(a)
    rank = x.type.rank
    src = [normalize_axis(s, rank) for s in _as_shape(source)]
    dst = [normalize_axis(d, rank) for d in _as_shape(destination)]
    if len(src) != len(dst):
        raise ShapeError("moveaxis: source and destination must have the same number of "
                         "elements", user_location())
    perm = [i for i in range(rank) if i not in src]
    for d, s in sorted(zip(dst, src)):
        perm.insert(d, s)
    return transpose(rec, x, perm)


def expand_dims(rec: Recorder, a: Operand, axis: ShapeLike) -> Value:
    x = rec.value(a)
    rank = x.type.rank + len(_as_shape(axis))
    new = sorted(normalize_axis(ax, rank) for ax in _as_shape(axis))
    if len(set(new)) != len(new):
        raise ShapeError(f"expand_dims: repeated axis in {axis}", user_location())
    dims = iter(x.type.shape)
    return reshape(rec, x, tuple(1 if i in new else next(dims) for i in range(rank)))


def squeeze(rec: Recorder, a: Operand, axis: ShapeLike | None = None) -> Value:
    """Drop size-1 dims (all of them, or those in `axis`, which must have size 1)."""
    x = rec.value(a)
    shape = x.type.shape
    if axis is None:
        drop = {i for i, s in enumerate(shape) if s == 1}
    else:
        drop = {normalize_axis(ax, x.type.rank) for ax in _as_shape(axis)}
        if any(shape[i] != 1 for i in drop):
            raise ShapeError("cannot select an axis to squeeze out which has size not equal "
                             f"to one (shape {list(shape)}, axis {axis})", user_location())
    return reshape(rec, x, tuple(s for i, s in enumerate(shape) if i not in drop))


def broadcast_to(rec: Recorder, array: Operand, shape: ShapeLike) -> Value:
    x = rec.value(array)
    target = _as_shape(shape)
    if target == x.type.shape:
        return x
    return rec.emit("broadcast_to", [x], result=TensorType(x.type.dtype, target))


def ravel(rec: Recorder, a: Operand) -> Value:
    x = rec.value(a)
    return reshape(rec, x, (x.type.size,))


def at_least(rec: Recorder, a: Operand, rank: int) -> Value:
    """numpy's ``atleast_1d``/``atleast_2d``: a 0-d array becomes ``[1]*rank``, a 1-D
    array of n elements ``[1, n]``."""
    x = rec.value(a)
    if x.type.rank >= rank:
        return x
    return reshape(rec, x, (1,) * (rank - x.type.rank) + x.type.shape)


def flip(rec: Recorder, m: Operand, axis: ShapeLike | None = None) -> Value:
    """Reverse the order of the elements along `axis` (None: along every dim)."""
    x = rec.value(m)
    rank = x.type.rank
    axes = range(rank) if axis is None else (normalize_axis(int(a), rank) for a in _as_shape(axis))
    return reverse(rec, x, axes)


def reverse(rec: Recorder, x: Value, axes: Iterable[int]) -> Value:
    """The ``reverse`` op over `axes` (non-negative; a repeated axis is reversed once, as
    numpy's flip does), skipping dims of one element
    or none, which reversing leaves as they are."""
    kept = tuple(a for a in sorted(set(axes)) if x.type.shape[a] > 1)
    return rec.emit("reverse", [x], {"axes": kept}) if kept else x
