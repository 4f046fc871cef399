"""Creating ops with checked result types.

`Builder.create` infers the result type from the registry (or checks a declared one), so no
op enters a function with a shape or dtype that does not follow from its operands.
"""

from __future__ import annotations

from dtensor_compiler.errors import Location, ShapeError
from dtensor_compiler.ir import opdefs
from dtensor_compiler.ir.core import Attr, Function, Operation, Value
from dtensor_compiler.ir.opdefs import InferContext
from dtensor_compiler.ir.sharding import Sharding
from dtensor_compiler.ir.types import TensorType


def make_op(name: str, operands: list[Value], attrs: dict[str, Attr] | None,
            ctx: InferContext, declared: TensorType | None = None,
            sharding: Sharding | None = None, loc: Location | None = None,
            why: str | None = None) -> Operation:
    """A new, unattached op. Raises ShapeError (with `loc`) when the operands do not fit."""
    attrs = dict(attrs or {})
    opdef = opdefs.get(name)
    if opdef.num_operands is not None and len(operands) != opdef.num_operands:
        raise ShapeError(f"{name} takes {opdef.num_operands} operands, got {len(operands)}", loc)
    missing = [a for a in opdef.attrs if a not in attrs]
    if missing:
        raise ShapeError(f"{name} is missing attributes {missing}", loc)
    try:
        dtype, shape = opdef.infer([v.type for v in operands], attrs, declared, ctx)
    except ValueError as e:
        raise ShapeError(f"{name}: {e}", loc) from None
    if sharding is None and declared is not None:
        sharding = declared.sharding
    return Operation(name, operands, TensorType(dtype, tuple(shape), sharding), attrs, loc, why)


class Builder:
    """Appends ops to a function, or inserts them before an anchor op."""

    def __init__(self, func: Function, ctx: InferContext, before: Operation | None = None
                 ) -> None:
        self.func = func
        self.ctx = ctx
        self.before = before

    def create(self, name: str, operands: list[Value], attrs: dict[str, Attr] | None = None,
               declared: TensorType | None = None, sharding: Sharding | None = None,
               loc: Location | None = None, why: str | None = None) -> Value:
        op = make_op(name, operands, attrs, self.ctx, declared, sharding, loc, why)
        if self.before is None:
            self.func.ops.append(op)
        else:
            self.func.insert_before(self.before, op)
        assert op.result is not None
        return op.result
