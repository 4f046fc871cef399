"""Shape and dtype rules shared by the op definitions and the tracer.

Dtype rules ask numpy itself (on one-element arrays), so promotion is numpy's own, not a
re-implementation of it. Shape rules raise `ValueError` with a plain message when operands do
not fit; the caller (tracer, builder, verifier) adds the location.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from dtensor_compiler.ir.types import TensorType, dtype_name, numpy_dtype

Shape = tuple[int, ...]


@functools.cache
def ufunc_result_dtype(ufunc: str, dtypes: tuple[str, ...]) -> str:
    """The result dtype numpy gives `ufunc` on operands of `dtypes`."""
    args = [np.ones(1, dtype=numpy_dtype(d)) for d in dtypes]
    with np.errstate(all="ignore"):
        out = getattr(np, ufunc)(*args)
    return dtype_name(out.dtype)


@functools.cache
def matmul_result_dtype(a: str, b: str) -> str:
    """The dtype numpy's ``matmul`` gives (bfloat16 @ bfloat16 is float32, unlike ``dot``)."""
    out = np.matmul(np.ones((1, 1), numpy_dtype(a)), np.ones((1, 1), numpy_dtype(b)))
    return dtype_name(out.dtype)


@functools.cache
def accumulated_dtype(reduction: str, dtype: str) -> str:
    """The dtype numpy's ``sum`` or ``prod`` (`reduction`) gives on `dtype` (small ints
    widen)."""
    fn = np.sum if reduction == "sum" else np.prod
    return dtype_name(fn(np.ones(1, numpy_dtype(dtype))).dtype)


def declared_type(declared: Sequence[TensorType]) -> TensorType:
    """The declared result type of an op whose result type is declared."""
    if not declared:
        raise ValueError("this op needs a declared result type")
    return declared[0]


def broadcast_shapes(*shapes: Shape) -> Shape:
    """numpy's broadcasting of `shapes` (written out: ``np.broadcast_shapes`` costs more than
    the rest of inferring a small op)."""
    rank = max((len(s) for s in shapes), default=0)
    out = [1] * rank
    for shape in shapes:
        for i, size in enumerate(shape, rank - len(shape)):
            if size == 1 or size == out[i]:
                continue
            if out[i] != 1:
                raise ValueError("shapes " + ", ".join(str(list(s)) for s in shapes)
                                 + " cannot be broadcast together")
            out[i] = size
    return tuple(out)


def normalize_axis(axis: int, rank: int) -> int:
    if not -rank <= axis < rank:
        raise ValueError(f"axis {axis} is out of bounds for rank {rank}")
    return axis % rank


def check_axis(axis: int, rank: int) -> None:
    """An op attribute's axis must already be normalized."""
    if not 0 <= axis < rank:
        raise ValueError(f"axis {axis} out of bounds for rank {rank}")


def reduced_shape(shape: Shape, axes: tuple[int, ...], keepdims: bool) -> Shape:
    if keepdims:
        return tuple(1 if i in axes else s for i, s in enumerate(shape))
    return tuple(s for i, s in enumerate(shape) if i not in axes)


def matmul_shape(a: Shape, b: Shape) -> Shape:
    if len(a) < 2 or len(b) < 2:
        raise ValueError("matmul operands must have rank >= 2 (the tracer lifts vectors)")
    if a[-1] != b[-2]:
        raise ValueError(f"matmul contracting dims differ: {list(a)} @ {list(b)}")
    batch = broadcast_shapes(a[:-2], b[:-2])
    return batch + (a[-2], b[-1])


def parse_einsum(spec: str, num_operands: int) -> tuple[list[str], str]:
    """Split an explicit einsum spec ``"ij,jk->ik"`` into operand subscripts and the output."""
    if "->" not in spec or "." in spec:
        raise ValueError(f"einsum spec {spec!r} must be explicit ('->') and without ellipsis")
    lhs, out = spec.replace(" ", "").split("->")
    ins = lhs.split(",")
    if len(ins) != num_operands:
        raise ValueError(f"einsum spec {spec!r} names {len(ins)} operands, got {num_operands}")
    for sub in ins + [out]:
        if not sub.isalpha() and sub:
            raise ValueError(f"einsum subscripts must be letters, got {sub!r}")
    if len(set(out)) != len(out):
        raise ValueError(f"einsum output {out!r} repeats a subscript")
    return ins, out


def slice_length(start: int, stop: int, step: int) -> int:
    return max(0, (stop - start + step - 1) // step)
