"""Creating ops with checked attributes and result types.

`make_op` coerces the attributes to their kinds (filling in defaults) and infers the result
types from the op's definition (or checks declared ones), so no op enters a function with an
attribute, shape or dtype that does not follow from its definition and operands.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from dtensor_compiler.errors import Location, ShapeError
from dtensor_compiler.ir import opdef
from dtensor_compiler.ir.attrs import Attr
from dtensor_compiler.ir.core import Function, Operation, Value
from dtensor_compiler.ir.opdef import InferContext
from dtensor_compiler.ir.reasons import Reason
from dtensor_compiler.ir.sharding import Sharding
from dtensor_compiler.ir.types import TensorType


def make_op(name: str, operands: Sequence[Value], attrs: Mapping[str, object] | None,
            ctx: InferContext, declared: TensorType | Sequence[TensorType] | None = None,
            sharding: Sharding | Sequence[Sharding | None] | None = None,
            loc: Location | None = None, why: Reason | None = None) -> Operation:
    """A new, unattached op. Raises ShapeError (with `loc`) when the operands or attributes
    do not fit. `declared` and `sharding` give one entry per result (or one value for a
    single-result op); a result's sharding defaults to its declared type's."""
    definition = opdef.lookup(name)
    if definition.operands is not None and len(operands) != definition.operands:
        raise ShapeError(f"{name} takes {definition.operands} operands, got {len(operands)}",
                         loc)
    if (definition.results == 1 and (declared is None or isinstance(declared, TensorType))
            and (sharding is None or isinstance(sharding, Sharding))):
        return _make_single(definition, operands, attrs, ctx, declared, sharding, loc, why)
    declared_types = _per_result(declared, definition.results)
    shardings = _per_result(sharding, definition.results)
    try:
        typed: dict[str, Attr] = definition.make_attrs(attrs or {})
        inferred = definition.infer([v.type for v in operands], typed,
                                    [t for t in declared_types if t is not None], ctx)
    except ValueError as e:
        raise ShapeError(f"{name}: {e}", loc) from None
    if len(inferred) != definition.results:
        raise ShapeError(f"{name} infers {len(inferred)} results, its definition says "
                         f"{definition.results}", loc)
    types = []
    for (dtype, shape), given, layout in zip(inferred, declared_types, shardings):
        if layout is None and given is not None:
            layout = given.sharding
        types.append(TensorType(dtype, tuple(shape), layout))
    return Operation(name, operands, types, typed, loc, why)


def _make_single(definition: opdef.OpDef, operands: Sequence[Value],
                 attrs: Mapping[str, object] | None, ctx: InferContext,
                 declared: TensorType | None, sharding: Sharding | None,
                 loc: Location | None, why: Reason | None) -> Operation:
    """`make_op` for the common case: one result, given (if at all) as one type and layout
    (planning builds thousands of these)."""
    try:
        typed: dict[str, Attr] = definition.make_attrs(attrs or {})
        ((dtype, shape),) = definition.infer([v.type for v in operands], typed,
                                             () if declared is None else (declared,), ctx)
    except ValueError as e:
        raise ShapeError(f"{definition.name}: {e}", loc) from None
    if sharding is None and declared is not None:
        sharding = declared.sharding
    op = Operation(definition.name, operands, (TensorType(dtype, tuple(shape), sharding),),
                   typed, loc, why)
    if definition.fills is not None:
        op.results[0].type = op.type.with_pad(definition.fills(op))
    return op


def _per_result(given: object, count: int) -> list:
    if given is None:
        return [None] * count
    if isinstance(given, (TensorType, Sharding)):
        return [given] + [None] * (count - 1)
    assert isinstance(given, (list, tuple))
    return list(given) + [None] * (count - len(given))


class Builder:
    """Appends ops to a function, or inserts them before an anchor op."""

    def __init__(self, func: Function, ctx: InferContext, before: Operation | None = None
                 ) -> None:
        self.func = func
        self.ctx = ctx
        self.before = before

    def create_op(self, name: str, operands: Sequence[Value],
                  attrs: Mapping[str, object] | None = None,
                  declared: TensorType | Sequence[TensorType] | None = None,
                  sharding: Sharding | Sequence[Sharding | None] | None = None,
                  loc: Location | None = None, why: Reason | None = None) -> Operation:
        op = make_op(name, operands, attrs, self.ctx, declared, sharding, loc, why)
        self.append(op)
        return op

    def append(self, op: Operation) -> None:
        """Add an op made by `make_op` (at the anchor, if there is one)."""
        if self.before is None:
            self.func.ops.append(op)
        else:
            self.func.insert_before(self.before, op)

    def create(self, name: str, operands: Sequence[Value],
               attrs: Mapping[str, object] | None = None, declared: TensorType | None = None,
               sharding: Sharding | None = None, loc: Location | None = None,
               why: Reason | None = None) -> Value:
        """Add a single-result op; returns its result."""
        op = self.create_op(name, operands, attrs, declared, sharding, loc, why)
        result = op.result
        assert result is not None, f"{name} has no result; use create_op"
        return result
