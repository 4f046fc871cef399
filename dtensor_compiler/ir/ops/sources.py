"""Sources: ops without operands. ``constant`` (a dense array), ``full`` (one scalar
everywhere) and ``iota`` (counting along one dim). Their result types are declared.

In localized IR a ``constant`` keeps its global value, which the runtime splits per device;
``iota`` counts from each device's block offset.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from dtensor_compiler.ir.attrs import AttrKind, AttrSpec, int_attr
from dtensor_compiler.ir.core import Level, Operation
from dtensor_compiler.ir.factors import FactorRule, RuleBuilder
from dtensor_compiler.ir.inference import declared_type
from dtensor_compiler.ir.opdef import (
    Attrs,
    Factors,
    InferContext,
    OpDef,
    ResultSig,
    register,
)
from dtensor_compiler.ir.types import TensorType, dtype_name, numpy_dtype


def _source_rule(attrs: Attrs, operands: Sequence[TensorType], result: TensorType
                 ) -> FactorRule:
    b = RuleBuilder()
    return b.build([], [b.dim(s) for s in result.shape])


SOURCE_RULE = Factors(_source_rule)
"""Every result dim is its own factor: a source can be made in any layout."""


def _constant(ts: Sequence[TensorType], attrs: Attrs, declared: Sequence[TensorType],
              ctx: InferContext) -> list[ResultSig]:
    value = attrs["value"]
    assert isinstance(value, np.ndarray)
    target = declared_type(declared)
    if dtype_name(value.dtype) != target.dtype:
        raise ValueError(f"constant value has dtype {dtype_name(value.dtype)}, type says "
                         f"{target.dtype}")
    expected = target.shape
    if ctx.level is Level.LOCAL and target.sharding is not None:
        expected = target.global_shape(ctx.mesh)
    if tuple(value.shape) != expected:
        raise ValueError(f"constant value has shape {list(value.shape)}, type says "
                         f"{list(target.shape)}")
    return [(target.dtype, target.shape)]


def _constant_value(op: Operation) -> np.ndarray:
    value = op.attrs["value"]
    assert isinstance(value, np.ndarray)
    return value


CONSTANT = register(OpDef(name="constant", operands=0, infer=_constant,
                          attrs=(AttrSpec("value", AttrKind.ARRAY),), declared_type=True,
                          sharding=SOURCE_RULE, folds=False, value=_constant_value))
"""A dense array, printed inline when small (``dense<...>``), else as raw bytes."""


def _declared(ts: Sequence[TensorType], attrs: Attrs, declared: Sequence[TensorType],
              ctx: InferContext) -> list[ResultSig]:
    target = declared_type(declared)
    return [(target.dtype, target.shape)]


def _full_value(op: Operation) -> np.ndarray:
    scalar = np.asarray(op.attrs["value"], dtype=numpy_dtype(op.type.dtype))
    return np.broadcast_to(scalar, op.type.shape)  # a view: large splats cost no memory


def _full(ts: Sequence[TensorType], attrs: Attrs, declared: Sequence[TensorType],
          ctx: InferContext) -> list[ResultSig]:
    """The declared type; its dtype must hold the value exactly where it is an integer or
    bool (a float dtype rounds it, as numpy does)."""
    target = declared_type(declared)
    value = attrs["value"]
    dtype = numpy_dtype(target.dtype)
    if dtype.kind in "biu":
        whole = isinstance(value, (bool, int)) or (
            isinstance(value, float) and math.isfinite(value) and value.is_integer())
        if not whole:
            fits = False
        elif dtype.kind == "b":
            fits = value in (0, 1)
        else:
            assert isinstance(value, (bool, int, float))
            info = np.iinfo(dtype)
            fits = info.min <= int(value) <= info.max
        if not fits:
            raise ValueError(f"full value {value!r} does not fit {target.dtype}")
    return [(target.dtype, target.shape)]


FULL = register(OpDef(name="full", operands=0, infer=_full,
                      attrs=(AttrSpec("value", AttrKind.SCALAR),), declared_type=True,
                      sharding=SOURCE_RULE, folds=False, value=_full_value))
"""Every element is `value`."""


def _iota(ts: Sequence[TensorType], attrs: Attrs, declared: Sequence[TensorType],
          ctx: InferContext) -> list[ResultSig]:
    target = declared_type(declared)
    dimension = int_attr(attrs, "dimension")
    if not 0 <= dimension < target.rank:
        raise ValueError(f"iota dimension {dimension} out of bounds for {list(target.shape)}")
    return [(target.dtype, target.shape)]


IOTA = register(OpDef(name="iota", operands=0, infer=_iota,
                      attrs=(AttrSpec("dimension", AttrKind.INT),), declared_type=True,
                      sharding=SOURCE_RULE, folds=False))
"""``0, 1, 2, ...`` along `dimension`, the same along every other dim."""
