"""simplify: remove identities, fold small constants, share common subexpressions, drop dead ops.

Expects: any verified module, before or after layout propagation.

Guarantees, per function, in one walk in program order followed by one backward sweep:
- identities are gone: ``reshape`` to the same shape, ``transpose`` by the identity
  permutation, ``broadcast_to`` the same shape, ``astype`` to the same dtype, and ``relayout``
  of a value that already has the target layout (only when both layouts are set: a pinned
  layout on a value without one yet stays). Only ops whose result type, layout included,
  equals their operand's type are removed;
- folding: an op whose operands are all ``constant`` or ``full`` and whose result has at most
  `fold_limit` elements becomes a ``full`` when every element is the same, else a
  ``constant``, with the same result type and location (global-shape modules only; complex
  results are not folded, since the IR text has no complex attributes);
- CSE: an op with the same name, operands, attributes (arrays compared by dtype, shape and
  bytes) and result type as an earlier one is replaced by it (``relayout`` ops are kept: each
  pinned layout stays with its own annotation);
- DCE: ops whose result is neither used nor returned are removed (ops without a result are
  kept).
No layout changes; the verifier's invariants hold after the pass.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

import numpy as np

from dtensor_compiler.ir.builder import make_op
from dtensor_compiler.ir.core import Function, Module, Operation, Value
from dtensor_compiler.ir.opdefs import InferContext
from dtensor_compiler.ir.types import numpy_dtype
from dtensor_compiler.pass_manager import ModulePass, PassContext, register_pass
from dtensor_compiler.passes._evaluate import evaluate

SOURCES = ("constant", "full")
"""Ops whose value is known at compile time, the inputs of folding."""


@register_pass
@dataclass(frozen=True)
class SimplifyPass(ModulePass):
    """CSE, DCE, constant folding and removal of identity ops."""

    name = "simplify"
    fold_limit: int = 1024
    """Largest result (in elements) that folding may create."""

    def apply(self, module: Module, ctx: PassContext) -> None:
        infer = InferContext(module.mesh, module.localized)
        for func in module.functions:
            _Simplifier(func, infer, self.fold_limit).run()


class _Simplifier:
    """One function: a forward walk (identities, folding, CSE), then a backward DCE sweep."""

    def __init__(self, func: Function, infer: InferContext, fold_limit: int) -> None:
        self.func = func
        self.infer = infer
        self.fold_limit = fold_limit
        self.seen: dict[Hashable, Value] = {}
        self.ops: list[Operation] = []

    def run(self) -> None:
        for op in self.func.ops:
            self._visit(op)
        self.func.ops = self._without_dead_ops(self.ops)

    def _visit(self, op: Operation) -> None:
        result = op.result
        if result is None:
            self.ops.append(op)
            return
        if _is_identity(op):
            self._replace(op, op.operands[0])
            return
        folded = self._fold(op)
        if folded is not None:
            self._replace(op, self._keep(folded))
            return
        key = None if op.name == "relayout" else _cse_key(op)
        if key is not None and key in self.seen:
            self._replace(op, self.seen[key])
            return
        if key is not None:
            self.seen[key] = result
        self.ops.append(op)

    def _keep(self, op: Operation) -> Value:
        """Add a new op, or reuse an equal earlier one; return its result."""
        assert op.result is not None
        key = _cse_key(op)
        if key in self.seen:
            op.drop_operands()
            return self.seen[key]
        self.seen[key] = op.result
        self.ops.append(op)
        return op.result

    def _fold(self, op: Operation) -> Operation | None:
        """The ``full`` or ``constant`` op `op` folds to, not yet added."""
        result = op.result
        assert result is not None
        if (self.infer.localized or not op.operands or result.type.size > self.fold_limit
                or numpy_dtype(result.type.dtype).kind == "c"
                or any(v.owner is None or v.owner.name not in SOURCES for v in op.operands)):
            return None
        value = evaluate(op, [_source_value(v) for v in op.operands])
        if value is None:
            return None
        flat = value.reshape(-1)
        if flat.size and _all_equal(flat):
            name, attr = "full", flat[0].item()
        else:
            name, attr = "constant", value
        folded = make_op(name, [], {"value": attr}, self.infer, declared=result.type, loc=op.loc)
        assert folded.result is not None
        folded.result.origin = result.origin
        return folded

    def _replace(self, op: Operation, value: Value) -> None:
        assert op.result is not None
        self.func.replace_value(op.result, value)
        op.drop_operands()

    def _without_dead_ops(self, ops: list[Operation]) -> list[Operation]:
        kept: list[Operation] = []
        for op in reversed(ops):
            result = op.result
            if result is not None and not result.uses and not self.func.is_result(result):
                op.drop_operands()
            else:
                kept.append(op)
        kept.reverse()
        return kept


def _is_identity(op: Operation) -> bool:
    if len(op.operands) != 1 or op.type != op.operands[0].type:
        return False
    if op.name in ("reshape", "broadcast_to", "astype"):
        return True
    if op.name == "transpose":
        return tuple(op.attrs["perm"]) == tuple(range(op.type.rank))
    return op.name == "relayout" and op.type.sharding is not None


def _source_value(value: Value) -> np.ndarray:
    op = value.owner
    assert op is not None and op.name in SOURCES
    if op.name == "constant":
        return np.asarray(op.attrs["value"])
    scalar = np.asarray(op.attrs["value"], dtype=numpy_dtype(value.type.dtype))
    return np.broadcast_to(scalar, value.type.shape)  # a view: large splats cost no memory


def _all_equal(flat: np.ndarray) -> bool:
    """Bitwise equality of every element with the first (so 0.0 and -0.0 differ)."""
    rows = np.ascontiguousarray(flat).view(np.uint8).reshape(flat.size, flat.dtype.itemsize)
    return bool((rows == rows[0]).all())


def _attr_key(value: object) -> Hashable:
    if isinstance(value, np.ndarray):
        return ("array", value.dtype.str, value.shape, value.tobytes())
    if isinstance(value, float):
        return ("float", value.hex())  # tells 0.0 from -0.0, and nan equals nan
    if isinstance(value, (tuple, list)):
        return tuple(_attr_key(v) for v in value)
    return (type(value).__name__, value)


def _cse_key(op: Operation) -> Hashable:
    assert op.result is not None
    attrs = tuple(sorted((k, _attr_key(v)) for k, v in op.attrs.items()))
    return (op.name, op.operands, attrs, op.result.type)
