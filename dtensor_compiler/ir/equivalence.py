"""When two ops compute the same values: the key common-subexpression elimination compares.

Two pure ops are interchangeable when they have the same name, the same operands (in any
order for a commutative op), the same attributes (arrays by dtype, shape and bytes, floats by
their bits), the same result types and the same reason (so each pinned layout keeps its own
annotation). `simplify` merges them; reverse-mode differentiation treats them as one value
before it takes derivatives, so a subexpression the user wrote twice (``x - mu`` in a
layernorm) gets one backward computation, not two.
"""

from __future__ import annotations

import struct
from collections.abc import Hashable, Sequence

import numpy as np

from dtensor_compiler.ir import opdef
from dtensor_compiler.ir.core import Operation, Value


def cse_key(op: Operation, definition: opdef.OpDef,
            operands: Sequence[Value] | None = None, ordered: bool = False) -> Hashable:
    """The key of `op` (with `operands` in place of its own, when given: values already
    known to equal them). With `ordered`, a commutative op's operands count in their order
    too: equal values, but the derivative rules of ``maximum`` and ``minimum`` give a tie to
    the first operand, so to differentiation ``maximum(a, b)`` is not ``maximum(b, a)``."""
    attrs = tuple(sorted((k, _attr_key(v)) for k, v in op.attrs.items()))
    given: Sequence[Value] = op.operands if operands is None else operands
    key_operands: Hashable = tuple(given)
    if definition.traits.commutative and not ordered:
        key_operands = tuple(sorted(map(id, given)))
    types = (op.result.type,) if op.result is not None else tuple(r.type for r in op.results)
    return (op.name, key_operands, attrs, types, op.why)


def _attr_key(value: object) -> Hashable:
    if isinstance(value, np.ndarray):
        return ("array", value.dtype.str, value.shape, value.tobytes())
    if isinstance(value, float):
        return ("float", struct.pack("<d", value))  # its bits: 0.0 is not -0.0, nor nan -nan
    if isinstance(value, (tuple, list)):
        return tuple(_attr_key(v) for v in value)
    return (type(value).__name__, value)
