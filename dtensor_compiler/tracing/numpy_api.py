"""The numpy API a traced array supports: numpy function (or ufunc) to lowering.

`FUNCTIONS` maps every supported numpy function to a handler that takes the recorder, then
numpy's own arguments with each traced array replaced by its IR value, and returns a value, a
list of values or a plain Python result (``np.shape``). Handlers state the parameters they
support; a call with any other argument, and any function or ufunc method not listed here,
raises `UnsupportedOperationError` naming it.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

import numpy as np
from numpy.typing import DTypeLike

from dtensor_compiler.errors import UnsupportedOperationError
from dtensor_compiler.ir.core import Value
from dtensor_compiler.ir.ops.elementwise import UFUNCS
from dtensor_compiler.tracing import (
    contractions,
    creation,
    elementwise,
    indexing,
    joining,
    linalg,
    reductions,
    shape_ops,
)
from dtensor_compiler.tracing.location import user_location
from dtensor_compiler.tracing.recorder import Operand, Recorder

Handler = Callable[..., object]

_ELEMENTWISE = frozenset(UFUNCS)


def qualified_name(func: Callable) -> str:
    """``numpy.linalg.svd`` for ``np.linalg.svd``; ``numpy.<name>`` for ufuncs."""
    if isinstance(func, np.ufunc):
        return f"numpy.{func.__name__}"
    module = getattr(func, "__module__", None) or "numpy"
    return f"{module}.{getattr(func, '__name__', repr(func))}"


@functools.cache
def _signature(handler: Handler) -> inspect.Signature:
    return inspect.signature(handler)


def _call(name: str, handler: Handler, rec: Recorder, args: tuple, kwargs: dict) -> object:
    try:
        bound = _signature(handler).bind(rec, *args, **kwargs)
    except TypeError as e:
        raise UnsupportedOperationError(f"{name} is supported, but not with these arguments: {e}",
                                        user_location()) from None
    if rec.calling is not None:  # a function used by another one: the outer call names it
        return handler(*bound.args, **bound.kwargs)
    rec.calling = name.removeprefix("numpy.")
    try:
        return handler(*bound.args, **bound.kwargs)
    finally:
        rec.calling = None


def call_function(func: Callable, rec: Recorder, args: tuple, kwargs: dict) -> object:
    """numpy's `func` on unwrapped arguments (the ``__array_function__`` protocol)."""
    handler = FUNCTIONS.get(func)
    if handler is None:
        raise UnsupportedOperationError(f"{qualified_name(func)} is not supported",
                                        user_location())
    return _call(qualified_name(func), handler, rec, args, kwargs)


def call_ufunc(ufunc: np.ufunc, method: str, rec: Recorder, inputs: tuple, kwargs: dict
               ) -> object:
    """``ufunc.method(*inputs, **kwargs)`` on unwrapped inputs (``__array_ufunc__``)."""
    name = ufunc.__name__
    if method == "__call__" and (name == "matmul" or name in _ELEMENTWISE):
        if kwargs:
            raise UnsupportedOperationError(
                f"numpy.{name} with arguments {sorted(kwargs)} is not supported", user_location())
        if name == "matmul":
            return contractions.matmul(rec, *inputs)
        return elementwise.apply_ufunc(rec, name, inputs)
    handler = _UFUNC_METHODS.get((name, method))
    if handler is not None:
        return _call(f"numpy.{name}.{method}", handler, rec, inputs, kwargs)
    qualified = f"numpy.{name}" if method == "__call__" else f"numpy.{name}.{method}"
    raise UnsupportedOperationError(f"{qualified} is not supported", user_location())


# ---------------------------------------------------------------------------------------------
# adapters where numpy's signature differs from the lowering's


def _ufunc_reduce(rec: Recorder, array: Operand, axis: reductions.Axis = 0,
                  dtype: DTypeLike | None = None, *, keepdims: bool = False, kind: str) -> Value:
    return reductions.reduce(rec, kind, array, axis, dtype, keepdims)


def _reduction(kind: str) -> Handler:
    def handler(rec: Recorder, a: Operand, axis: reductions.Axis = None, *,
                keepdims: bool = False) -> Value:
        return reductions.reduce(rec, kind, a, axis, keepdims=keepdims)
    return handler


def _accumulation(kind: str) -> Handler:
    def handler(rec: Recorder, a: Operand, axis: reductions.Axis = None,
                dtype: DTypeLike | None = None, *, keepdims: bool = False) -> Value:
        return reductions.reduce(rec, kind, a, axis, dtype, keepdims)
    return handler


def _mean(rec: Recorder, a: Operand, axis: reductions.Axis = None,
          dtype: DTypeLike | None = None, *, keepdims: bool = False) -> Value:
    return reductions.mean(rec, a, axis, dtype, keepdims)


def _var(rec: Recorder, a: Operand, axis: reductions.Axis = None, dtype: DTypeLike | None = None, *,
         ddof: int | float = 0, keepdims: bool = False) -> Value:
    return reductions.var(rec, a, axis, dtype, ddof, keepdims)


def _std(rec: Recorder, a: Operand, axis: reductions.Axis = None, dtype: DTypeLike | None = None, *,
         ddof: int | float = 0, keepdims: bool = False) -> Value:
    return reductions.std(rec, a, axis, dtype, ddof, keepdims)


def _arg_reduction(kind: str) -> Handler:
    def handler(rec: Recorder, a: Operand, axis: int | None = None, *,
                keepdims: bool = False) -> Value:
        return reductions.arg_reduce(rec, kind, a, axis, keepdims)
    return handler


def _logical(kind: str) -> Handler:
    def handler(rec: Recorder, a: Operand, axis: reductions.Axis = None, *,
                keepdims: bool = False) -> Value:
        return reductions.logical_reduce(rec, kind, a, axis, keepdims)
    return handler


def _round(rec: Recorder, a: Operand, decimals: int = 0) -> Value:
    return elementwise.round_(rec, a, decimals)


def _where(rec: Recorder, condition: Operand, *xy: Operand) -> Value:
    if len(xy) != 2:
        raise UnsupportedOperationError(
            "numpy.where needs x and y: the one-argument form (nonzero) has a data-dependent "
            "shape", user_location())
    return elementwise.where(rec, condition, *xy)


def _clip(rec: Recorder, a: Operand, a_min: Operand | None = None,
          a_max: Operand | None = None, *, min: Operand | None = None,
          max: Operand | None = None) -> Value:
    lower = min if a_min is None else a_min
    upper = max if a_max is None else a_max
    return elementwise.clip(rec, a, lower, upper)


def _astype(rec: Recorder, x: Operand, dtype: DTypeLike | None, /, *, copy: bool = True,
            device: object = None) -> Value:
    """`copy` changes no value of an immutable traced array; `device` names numpy's CPU."""
    if device not in (None, "cpu"):
        raise UnsupportedOperationError(f"numpy.astype with device={device!r} is not "
                                        "supported", user_location())
    return elementwise.astype(rec, rec.value(x), dtype)


def _reshape(rec: Recorder, a: Operand, shape: shape_ops.ShapeLike) -> Value:
    return shape_ops.reshape(rec, a, shape)


def _copy(rec: Recorder, a: Operand) -> Value:
    return rec.value(a)


def _shape(rec: Recorder, a: Value) -> tuple[int, ...]:
    return a.type.shape


def _ndim(rec: Recorder, a: Value) -> int:
    return a.type.rank


def _size(rec: Recorder, a: Value, axis: int | None = None) -> int:
    if axis is None:
        return a.type.size
    return a.type.shape[shape_ops.normalize_axis(axis, a.type.rank)]


_UFUNC_METHODS: dict[tuple[str, str], Handler] = {
    **{(name, "reduce"): functools.partial(_ufunc_reduce, kind=kind)
       for name, kind in (("add", "sum"), ("multiply", "prod"), ("maximum", "max"),
                          ("minimum", "min"))},
    ("add", "accumulate"): reductions.accumulate,
    ("multiply", "accumulate"): functools.partial(reductions.accumulate, ufunc="multiply"),
}
"""The ufunc methods supported, by (ufunc name, method)."""

FUNCTIONS: dict[Callable, Handler] = {
    # elementwise
    np.where: _where,
    np.clip: _clip,
    np.astype: _astype,
    np.round: _round,
    np.around: _round,
    np.real: elementwise.real,
    np.imag: elementwise.imag,
    # reductions
    np.sum: _accumulation("sum"),
    np.prod: _accumulation("prod"),
    np.max: _reduction("max"),
    np.amax: _reduction("max"),
    np.min: _reduction("min"),
    np.amin: _reduction("min"),
    np.mean: _mean,
    np.var: _var,
    np.std: _std,
    np.argmax: _arg_reduction("argmax"),
    np.argmin: _arg_reduction("argmin"),
    np.cumsum: reductions.cumsum,
    np.cumprod: reductions.cumprod,
    np.any: _logical("any"),
    np.all: _logical("all"),
    np.sort: functools.partial(reductions.sort_along, name="sort"),
    np.argsort: functools.partial(reductions.sort_along, name="argsort"),
    np.linalg.norm: linalg.norm,
    # contractions
    np.dot: contractions.dot,
    np.einsum: contractions.einsum,
    np.tensordot: contractions.tensordot,
    np.inner: contractions.inner,
    np.outer: contractions.outer,
    # shapes
    np.reshape: _reshape,
    np.transpose: shape_ops.transpose,
    np.swapaxes: shape_ops.swapaxes,
    np.moveaxis: shape_ops.moveaxis,
    np.expand_dims: shape_ops.expand_dims,
    np.squeeze: shape_ops.squeeze,
    np.broadcast_to: shape_ops.broadcast_to,
    np.ravel: shape_ops.ravel,
    np.flip: shape_ops.flip,
    np.copy: _copy,
    np.shape: _shape,
    np.ndim: _ndim,
    np.size: _size,
    # joining and splitting
    np.concatenate: joining.concatenate,
    np.stack: joining.stack,
    np.hstack: joining.hstack,
    np.vstack: joining.vstack,
    np.split: joining.split,
    np.array_split: joining.array_split,
    np.roll: joining.roll,
    np.pad: joining.pad,
    # indexing
    np.take: indexing.take,
    # creation
    np.zeros_like: creation.zeros_like,
    np.ones_like: creation.ones_like,
    np.empty_like: creation.zeros_like,
    np.full_like: creation.full_like,
    np.zeros: creation.zeros,
    np.ones: creation.ones,
    np.empty: creation.zeros,
    np.full: creation.full,
    np.arange: creation.arange,
    np.triu: creation.triu,
    np.tril: creation.tril,
}
