"""The function under construction: appends ops at the user's source line, lifts constants.

Everything the lowering modules emit goes through `Recorder.emit`, which stamps the op with the
user's file and line and turns numpy's dtype complaints into `ShapeError`. Captured numpy
values enter the IR as strongly typed constants: an array whose elements are all the same
(``np.zeros(...)`` and friends), a numpy scalar and a 0-d array become a compact ``full`` op,
anything else (and a splat whose number the IR text cannot carry exactly, a NaN with its sign
bit set) a ``constant`` op holding a private copy of the data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeGuard

import numpy as np
from numpy.typing import DTypeLike

from dtensor_compiler.errors import Location, ShapeError, TraceError
from dtensor_compiler.ir.builder import Builder
from dtensor_compiler.ir.core import Function, Value
from dtensor_compiler.ir.opdef import InferContext
from dtensor_compiler.ir.printer import prints_exactly
from dtensor_compiler.ir.reasons import Reason
from dtensor_compiler.ir.sharding import MeshShape, Sharding
from dtensor_compiler.ir.types import (
    TensorType,
    dtype_name,
    is_floating,
    native_array,
    numpy_dtype,
)
from dtensor_compiler.ir.vjp import FullKey, full_key
from dtensor_compiler.tracing.location import user_location

PythonScalar = bool | int | float | complex
Operand = Value | np.ndarray | np.generic | PythonScalar | list | tuple
"""What a lowering accepts as an array: a traced value or anything numpy turns into an array."""


def is_python_scalar(x: object) -> TypeGuard[PythonScalar]:
    """Python numbers are weakly typed (NEP 50): the other operand decides the dtype."""
    return type(x) in (bool, int, float, complex)


def ir_dtype(dtype: DTypeLike | None) -> str:
    """The IR name of a numpy dtype; TraceError (at the user's line) if the IR has none."""
    try:
        return dtype_name(np.dtype(dtype))
    except TypeError:
        raise TraceError(f"dtype {dtype!r} is not supported by dtensor_compiler",
                         user_location()) from None


def scalar_attr(value: object, dtype: str) -> bool | int | float | complex:
    """`value` as the Python number a ``full`` op of `dtype` holds. Raises like numpy does
    when the value does not fit (``np.int8`` and 300)."""
    np_dtype = numpy_dtype(dtype)
    try:
        np.asarray(value, dtype=np_dtype)
    except (OverflowError, ValueError) as e:
        raise ShapeError(f"{value!r} does not fit {dtype}: {e}", user_location()) from None
    kind = np_dtype.kind
    # `value` is anything numpy converted above (a number, a numpy scalar, a 0-d array, a
    # numeric string), which the stubs of int(), float() and complex() cannot express.
    if kind == "b":
        return bool(value)
    if kind in "iu":
        return int(value)  # type: ignore[call-overload]
    if is_floating(np_dtype):
        return float(value)  # type: ignore[arg-type]
    return complex(value)  # type: ignore[call-overload]


class Recorder:
    """Appends ops to one traced function. Inactive once its trace has finished."""

    def __init__(self, func: Function, mesh: MeshShape) -> None:
        self.func = func
        self.mesh = mesh
        self.active = True
        self.calling: str | None = None
        """The numpy function being traced, named in the locations of the ops it emits."""
        self._builder = Builder(func, InferContext(mesh))
        self.constants: dict[FullKey, Value] = {}
        """The ``full`` ops emitted so far (`full_key`): a program's scalars (``x * 2`` in a
        loop, ``0.5 * g`` per parameter) and the derivative rules' are made once per value
        and source line (ops are only appended, so the first comes before every later use)."""

    @property
    def builder(self) -> Builder:
        """Appends ops to the function without a location of its own (derivative rules give
        the forward op's)."""
        return self._builder

    def emit(self, name: str, operands: Sequence[Value],
             attrs: Mapping[str, object] | None = None,
             result: TensorType | None = None, sharding: Sharding | None = None,
             why: Reason | None = None, loc: Location | None = None) -> Value:
        """Append op `name` at `loc` (default: the user's current line); `result` is the
        declared type of ops that need one."""
        loc = loc or user_location(self.calling)
        if not self.active:
            raise TraceError(f"a traced array of @{self.func.name} was used after its trace "
                             "finished (it escaped the function)", loc)
        try:
            return self._builder.create(name, list(operands), attrs, result, sharding, loc, why)
        except TypeError as e:  # numpy has no loop for these dtypes
            raise ShapeError(f"{name}: {e}", loc) from None

    def emit_effect(self, name: str, operands: Sequence[Value],
                    attrs: Mapping[str, object] | None = None) -> None:
        """Append op `name`, which has effects and no result, at the user's current line."""
        loc = user_location(self.calling)
        if not self.active:
            raise TraceError(f"a traced array of @{self.func.name} was used after its trace "
                             "finished (it escaped the function)", loc)
        try:
            self._builder.create_op(name, list(operands), attrs, loc=loc)
        except ValueError as e:
            raise TraceError(f"{name}: {e}", loc) from None

    def full(self, shape: Sequence[int], dtype: str, value: object) -> Value:
        """A tensor of `shape` filled with `value` (converted to `dtype`). A complex value, or
        a NaN with its sign bit set, is a 0-d ``constant`` broadcast to `shape`: ``full``
        holds a scalar attribute, and the IR text has no complex scalar and no signed NaN."""
        scalar = scalar_attr(value, dtype)
        if not isinstance(scalar, complex) and (scalar == scalar or prints_exactly(  # (a NaN)
                np.array(scalar, numpy_dtype(dtype)))):
            loc = user_location(self.calling)
            key = full_key(dtype, shape, scalar, loc)
            made = self.constants.get(key) if self.active else None
            if made is None:
                made = self.constants[key] = self.emit("full", [], {"value": scalar},
                                                       TensorType(dtype, tuple(shape)), loc=loc)
            return made
        zero_d = self.emit("constant", [], {"value": np.array(scalar, numpy_dtype(dtype))},
                           TensorType(dtype, ()))
        if not shape:
            return zero_d
        return self.emit("broadcast_to", [zero_d], result=TensorType(dtype, tuple(shape)))

    def constant(self, data: object) -> Value:
        """A captured numpy value (array, numpy scalar, nested list) as a constant."""
        array = native_array(data)
        dtype = ir_dtype(array.dtype)
        flat = array.reshape(-1)
        if flat.size and _all_equal(flat) and prints_exactly(flat[:1]):
            return self.full(array.shape, dtype, flat[0].item())
        return self.emit("constant", [], {"value": np.array(array, copy=True, order="C")},
                         TensorType(dtype, array.shape))

    def value(self, x: Operand) -> Value:
        """`x` as an IR value: traced values pass through, anything else becomes a constant
        (a Python number with numpy's default dtype for it)."""
        return x if isinstance(x, Value) else self.constant(x)


def _all_equal(flat: np.ndarray) -> bool:
    """Bitwise equality of every element with the first (so -0.0 and 0.0 differ, nan works)."""
    rows = np.ascontiguousarray(flat).view(np.uint8).reshape(flat.size, flat.dtype.itemsize)
    return bool((rows == rows[0]).all())
