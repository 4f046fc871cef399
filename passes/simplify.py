"""simplify: remove identities, fold small constants, share common subexpressions, drop dead ops.

Expects: any verified module, global or localized.

Guarantees, per function, in one walk in program order followed by one backward sweep:
- identities are gone: ops whose definition says this instance returns its operand unchanged
  (`OpDef.identity`: ``reshape`` or ``broadcast_to`` to the same type, ``transpose`` by the
  identity permutation, ``astype`` to the same dtype, ``relayout`` of a value that already
  has the target layout);
- folding: an op whose definition `folds`, whose operands are all sources with a known value
  (`OpDef.value`: ``constant``, ``full``) and whose result has at most `fold_limit` elements
  becomes a ``full`` when every element is the same, else a ``constant``, with the same
  result type and location. The value is computed by the numpy backend's kernel of the op
  (global modules only; complex results are not folded, since the IR text has no complex
  attributes);
- CSE: a pure op with the same name, operands (in any order for a commutative op),
  attributes (arrays compared by dtype, shape and bytes), result types and reason as an
  earlier one is replaced by it (so each pinned layout keeps its own annotation);
- DCE: pure ops none of whose results is used or returned are removed.
Ops with effects are never merged, removed or moved. No layout changes; the verifier's
invariants hold after the pass.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

import numpy as np

from dtensor_compiler.ir import opdef
from dtensor_compiler.ir.builder import make_op
from dtensor_compiler.ir.core import Function, Level, Module, Operation, Value
from dtensor_compiler.ir.equivalence import cse_key
from dtensor_compiler.ir.opdef import InferContext
from dtensor_compiler.ir.types import numpy_dtype
from dtensor_compiler.pass_manager import ModulePass, PassContext, register_pass
from dtensor_compiler.runtime.kernels_numpy import evaluate


@register_pass
@dataclass(frozen=True)
class SimplifyPass(ModulePass):
    """CSE, DCE, constant folding and removal of identity ops."""

    name = "simplify"
    requires = frozenset({Level.GLOBAL, Level.LOCAL})
    fold_limit: int = 1024
    """Largest result (in elements) that folding may create."""

    def apply(self, module: Module, ctx: PassContext) -> None:
        infer = InferContext(module.mesh, module.level)
        for func in module.functions:
            _Simplifier(func, infer, self.fold_limit).run()


class _Simplifier:
    """One function: a forward walk (identities, folding, CSE), then a backward DCE sweep."""

    def __init__(self, func: Function, infer: InferContext, fold_limit: int) -> None:
        self.func = func
        self.infer = infer
        self.fold_limit = fold_limit
        self.seen: dict[Hashable, Operation] = {}
        self.ops: list[Operation] = []

    def run(self) -> None:
        for op in self.func.ops:
            self._visit(op)
        self.func.ops = self._without_dead_ops(self.ops)

    def _visit(self, op: Operation) -> None:
        definition = opdef.lookup(op.name)
        if not definition.pure or not op.results:
            self.ops.append(op)
            return
        if definition.identity is not None and definition.identity(op):
            self._replace(op, [op.operands[0]])
            return
        folded = self._fold(op, definition)
        if folded is not None:
            self._replace(op, list(self._keep(folded).results))
            return
        key = cse_key(op, definition)
        if key in self.seen:
            self._replace(op, list(self.seen[key].results))
            return
        self.seen[key] = op
        self.ops.append(op)

    def _keep(self, op: Operation) -> Operation:
        """Add a new op, or reuse an equal earlier one."""
        key = cse_key(op, opdef.lookup(op.name))
        if key in self.seen:
            op.drop_operands()
            return self.seen[key]
        self.seen[key] = op
        self.ops.append(op)
        return op

    def _fold(self, op: Operation, definition: opdef.OpDef) -> Operation | None:
        """The ``full`` or ``constant`` op `op` folds to, not yet added."""
        if not definition.folds or self.infer.level is not Level.GLOBAL:
            return None
        result = op.result
        if (result is None or not op.operands or result.type.size > self.fold_limit
                or numpy_dtype(result.type.dtype).kind == "c"):
            return None
        if not all(_is_known(v) for v in op.operands):
            return None
        values = [_known_value(v) for v in op.operands]
        try:
            with np.errstate(all="ignore"):
                out = evaluate(op, values)
        except (IndexError, ValueError):
            return None  # e.g. an index out of range: left for the program to report at run time
        value = np.asarray(out, dtype=numpy_dtype(result.type.dtype)).reshape(result.type.shape)
        flat = value.reshape(-1)
        if flat.size and _all_equal(flat):
            name, attr = "full", flat[0].item()
        else:
            name, attr = "constant", value
        folded = make_op(name, [], {"value": attr}, self.infer, declared=result.type, loc=op.loc)
        assert folded.result is not None
        folded.result.origin = result.origin
        return folded

    def _replace(self, op: Operation, values: list[Value]) -> None:
        for old, new in zip(op.results, values):
            self.func.replace_value(old, new)
        op.drop_operands()

    def _without_dead_ops(self, ops: list[Operation]) -> list[Operation]:
        kept: list[Operation] = []
        is_result = self.func.is_result
        for op in reversed(ops):
            result = op.result
            if result is not None and (result.uses or is_result(result)):
                dead = False  # the common case, decided without the op's definition
            else:
                dead = opdef.lookup(op.name).pure and not any(
                    r.uses or is_result(r) for r in op.results)
            if dead:
                op.drop_operands()
            else:
                kept.append(op)
        kept.reverse()
        return kept


def _is_known(value: Value) -> bool:
    """Whether a source op with a compile-time value makes `value`."""
    op = value.owner
    return op is not None and opdef.lookup(op.name).value is not None


def _known_value(value: Value) -> np.ndarray:
    op = value.owner
    assert op is not None
    known = opdef.lookup(op.name).value
    assert known is not None
    return known(op)


def _all_equal(flat: np.ndarray) -> bool:
    """Bitwise equality of every element with the first (so 0.0 and -0.0 differ)."""
    rows = np.ascontiguousarray(flat).view(np.uint8).reshape(flat.size, flat.dtype.itemsize)
    return bool((rows == rows[0]).all())
