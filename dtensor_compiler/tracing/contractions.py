"""Contractions: matmul, dot, einsum, tensordot, inner and outer.

``matmul`` lifts a 1-D operand to a matrix with ``reshape`` (``[n] -> [1, n]`` on the left,
``[n, 1]`` on the right) and drops the lifted dim from the result, like numpy. ``dot`` is
``matmul`` unless its right operand has rank 3 or more, where it is a ``tensordot``.
``tensordot``, ``inner`` and ``outer`` become explicit ``einsum`` ops. An ``einsum`` of three or
more operands is a chain of two-operand ``einsum`` ops, in numpy's dtype for the whole, each
step contracting the pair that costs fewest multiply-adds (then gives the smallest result), so
every step is a contraction the planner can shard on its own.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from math import prod
from string import ascii_letters

import numpy as np

from dtensor_compiler.errors import ShapeError, UnsupportedOperationError
from dtensor_compiler.ir.core import Value
from dtensor_compiler.ir.inference import ufunc_result_dtype
from dtensor_compiler.ir.types import numpy_dtype
from dtensor_compiler.tracing.einsum_spec import explicit_spec
from dtensor_compiler.tracing.elementwise import apply_ufunc, astype, numpy_result_dtype
from dtensor_compiler.tracing.location import user_location
from dtensor_compiler.tracing.recorder import Operand, Recorder
from dtensor_compiler.tracing.shape_ops import broadcast_to, normalize_axis, ravel, reshape


def matmul(rec: Recorder, a: Operand, b: Operand) -> Value:
    x, y = rec.value(a), rec.value(b)
    if x.type.rank == 0 or y.type.rank == 0:
        raise ShapeError("matmul: an operand is 0-d; use * to scale", user_location())
    lift_x, lift_y = x.type.rank == 1, y.type.rank == 1
    if lift_x:
        x = reshape(rec, x, (1,) + x.type.shape)
    if lift_y:
        y = reshape(rec, y, y.type.shape + (1,))
    out = rec.emit("matmul", [x, y])
    rank = out.type.rank
    lifted = {rank - 2} if lift_x else set()
    lifted |= {rank - 1} if lift_y else set()
    return reshape(rec, out, tuple(s for i, s in enumerate(out.type.shape) if i not in lifted))


def dot(rec: Recorder, a: Operand, b: Operand) -> Value:
    x, y = rec.value(a), rec.value(b)
    if x.type.rank == 0 or y.type.rank == 0:
        return apply_ufunc(rec, "multiply", (x, y))
    if y.type.rank >= 3:
        return tensordot(rec, x, y, ((x.type.rank - 1,), (y.type.rank - 2,)))
    # numpy's dot and matmul differ in dtype for bfloat16 (bf16 and f32)
    expected = numpy_result_dtype("numpy.dot", np.dot, (x, y))
    return astype(rec, matmul(rec, x, y), numpy_dtype(expected))


def einsum(rec: Recorder, subscripts: object, *operands: Operand, optimize: object = False
           ) -> Value:
    """``np.einsum`` with a subscripts string. `optimize` only picks numpy's evaluation order,
    which the IR leaves to the compiler, so it is accepted and ignored."""
    if not isinstance(subscripts, str):
        raise UnsupportedOperationError("numpy.einsum is supported only with a subscripts "
                                        "string, not the sublist form", user_location())
    values = [rec.value(x) for x in operands]
    ins, out = explicit_spec(subscripts, [v.type.rank for v in values])
    _check_einsum_dtypes(",".join(ins) + "->" + out, values)
    sizes: dict[str, int] = {}
    for sub, v in zip(ins, values):
        if len(set(sub)) != len(sub):
            raise UnsupportedOperationError(
                f"numpy.einsum with a repeated subscript in {sub!r} (a diagonal or trace) is not "
                "supported", user_location())
        for c, s in zip(sub, v.type.shape):
            if s != 1 and sizes.setdefault(c, s) != s:
                raise ShapeError(f"einsum: subscript {c!r} has sizes {sizes[c]} and {s}",
                                 user_location())
    values = [broadcast_to(rec, v, tuple(sizes.get(c, 1) for c in sub))
              for sub, v in zip(ins, values)]
    if len(values) <= 2:
        return rec.emit("einsum", values, {"spec": ",".join(ins) + "->" + out})
    dtype = functools.reduce(lambda a, b: ufunc_result_dtype("multiply", (a, b)),
                             [v.type.dtype for v in values])
    terms = [(sub, astype(rec, v, numpy_dtype(dtype))) for sub, v in zip(ins, values)]
    while len(terms) > 2:
        i, j, kept = _cheapest_pair(terms, out, sizes)
        (si, vi), (sj, vj) = terms[i], terms[j]
        step = rec.emit("einsum", [vi, vj], {"spec": f"{si},{sj}->{kept}"})
        terms = [t for k, t in enumerate(terms) if k not in (i, j)] + [(kept, step)]
    (sa, va), (sb, vb) = terms
    return rec.emit("einsum", [va, vb], {"spec": f"{sa},{sb}->{out}"})


def _cheapest_pair(terms: list[tuple[str, Value]], out: str, sizes: dict[str, int]
                   ) -> tuple[int, int, str]:
    """The two terms to contract first, and the subscripts their product keeps (those the
    output or another term still needs, in order of appearance)."""
    best: tuple[tuple[int, int], int, int, str] | None = None
    for i, j in itertools.combinations(range(len(terms)), 2):
        joined = "".join(dict.fromkeys(terms[i][0] + terms[j][0]))
        others = out + "".join(s for k, (s, _) in enumerate(terms) if k not in (i, j))
        kept = "".join(c for c in joined if c in others)
        cost = (prod(sizes.get(c, 1) for c in joined), prod(sizes.get(c, 1) for c in kept))
        if best is None or cost < best[0]:
            best = (cost, i, j, kept)
    assert best is not None
    return best[1], best[2], best[3]


def _check_einsum_dtypes(spec: str, values: Sequence[Value]) -> None:
    """numpy's einsum on one-element stand-ins, for its error where it has no loop for the
    dtypes (ml_dtypes' floats)."""
    stand_ins = [np.ones((1,) * v.type.rank, numpy_dtype(v.type.dtype)) for v in values]
    try:
        np.einsum(spec, *stand_ins)
    except TypeError as e:
        raise ShapeError(f"numpy.einsum: {e}", user_location()) from None


def _axes(axes: int | Sequence[int]) -> tuple[int, ...]:
    return (axes,) if isinstance(axes, int) else tuple(axes)


def tensordot(rec: Recorder, a: Operand, b: Operand,
              axes: int | tuple[int | Sequence[int], int | Sequence[int]] = 2) -> Value:
    """Sum over `axes` of `a` against `axes` of `b` (an int n: the last n of `a`, first n
    of `b`); the result has `a`'s free dims, then `b`'s."""
    x, y = rec.value(a), rec.value(b)
    if isinstance(axes, int):
        ax_x = tuple(range(x.type.rank - axes, x.type.rank))
        ax_y = tuple(range(axes))
    else:
        ax_x, ax_y = _axes(axes[0]), _axes(axes[1])
    ax_x = tuple(normalize_axis(i, x.type.rank) for i in ax_x)
    ax_y = tuple(normalize_axis(i, y.type.rank) for i in ax_y)
    if len(ax_x) != len(ax_y) or any(x.type.shape[i] != y.type.shape[j]
                                     for i, j in zip(ax_x, ax_y)):
        raise ShapeError(f"tensordot: shape-mismatch for sum: axes {list(ax_x)} of "
                         f"{list(x.type.shape)} and {list(ax_y)} of {list(y.type.shape)}",
                         user_location())
    letters = iter(ascii_letters)
    sub_x = [next(letters) for _ in range(x.type.rank)]
    sub_y = [next(letters) for _ in range(y.type.rank)]
    for i, j in zip(ax_x, ax_y):
        sub_y[j] = sub_x[i]
    out = [c for i, c in enumerate(sub_x) if i not in ax_x]
    out += [c for j, c in enumerate(sub_y) if j not in ax_y]
    return rec.emit("einsum", [x, y], {"spec": f"{''.join(sub_x)},{''.join(sub_y)}->"
                                                f"{''.join(out)}"})


def inner(rec: Recorder, a: Operand, b: Operand) -> Value:
    x, y = rec.value(a), rec.value(b)
    if x.type.rank == 0 or y.type.rank == 0:
        return apply_ufunc(rec, "multiply", (x, y))
    return tensordot(rec, x, y, ((x.type.rank - 1,), (y.type.rank - 1,)))


def outer(rec: Recorder, a: Operand, b: Operand) -> Value:
    return rec.emit("einsum", [ravel(rec, a), ravel(rec, b)], {"spec": "i,j->ij"})
