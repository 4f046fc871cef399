"""IR data structures: values, operations, functions and modules.

One flat function body of single-result (or no-result) operations in SSA form. Use-lists are
kept in sync only through `Operation.set_operand` / `Value.replace_all_uses_with`; never mutate
`Value.uses` or `Operation._operands` directly. Names are assigned by the printer, except for
function arguments, which keep the user's parameter names.

Attributes are plain, typed Python values: int, float, bool, str, tuples of those, and
`numpy.ndarray` for dense constants. The op registry (`opdefs`) says which attributes each op
has. Layout facts live in the value's `TensorType.sharding` and in typed fields such as
`Value.origin`, never in attributes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from dtensor_compiler.errors import Location
from dtensor_compiler.ir.sharding import MeshShape
from dtensor_compiler.ir.types import TensorType

Attr = int | float | bool | str | tuple | np.ndarray


@dataclass(frozen=True)
class LayoutOrigin:
    """Why a value has its layout: the annotation it came from and the op that carried it."""

    source: str
    """The annotated value the layout was derived from (``%x``, ``out_layouts[0]``) or a rule."""
    via: str | None = None
    """The op (name and location) that propagated it, if any."""

    def text(self) -> str:
        return self.source if self.via is None else f"{self.source} via {self.via}"


class Value:
    """An SSA value: a function argument or the result of an operation."""

    __slots__ = ("type", "owner", "uses", "name_hint", "origin")

    def __init__(self, type: TensorType, owner: Operation | None = None,
                 name_hint: str | None = None) -> None:
        self.type = type
        self.owner = owner
        self.uses: list[tuple[Operation, int]] = []
        self.name_hint = name_hint
        self.origin: LayoutOrigin | None = None

    @property
    def users(self) -> list[Operation]:
        seen: dict[int, Operation] = {}
        for op, _ in self.uses:
            seen.setdefault(id(op), op)
        return list(seen.values())

    def replace_all_uses_with(self, other: Value) -> None:
        for op, i in list(self.uses):
            op.set_operand(i, other)

    def __repr__(self) -> str:
        return f"<Value {self.name_hint or ''}: {self.type}>"


class Operation:
    """One op: a name from the registry, operands, attributes, at most one result."""

    __slots__ = ("name", "_operands", "result", "attrs", "loc", "why")

    def __init__(self, name: str, operands: Iterable[Value], result_type: TensorType | None,
                 attrs: dict[str, Attr] | None = None, loc: Location | None = None,
                 why: str | None = None) -> None:
        self.name = name
        self._operands: list[Value] = []
        self.attrs: dict[str, Attr] = dict(attrs or {})
        self.loc = loc
        self.why = why
        self.result: Value | None = None if result_type is None else Value(result_type, self)
        for v in operands:
            self._operands.append(v)
            v.uses.append((self, len(self._operands) - 1))

    @property
    def operands(self) -> tuple[Value, ...]:
        return tuple(self._operands)

    def set_operand(self, index: int, value: Value) -> None:
        old = self._operands[index]
        old.uses.remove((self, index))
        self._operands[index] = value
        value.uses.append((self, index))

    def drop_operands(self) -> None:
        """Detach from all operands (before erasing the op)."""
        for i, v in enumerate(self._operands):
            v.uses.remove((self, i))
        self._operands = []

    @property
    def type(self) -> TensorType:
        assert self.result is not None, f"{self.name} has no result"
        return self.result.type

    def __repr__(self) -> str:
        return f"<Operation {self.name}>"


class Function:
    """A function: named arguments, a flat list of ops, returned values."""

    def __init__(self, name: str, args: list[Value], ops: list[Operation] | None = None,
                 results: list[Value] | None = None) -> None:
        self.name = name
        self.args = args
        self.ops: list[Operation] = list(ops or [])
        self._results: list[Value] = []
        self.set_results(results or [])

    @property
    def results(self) -> tuple[Value, ...]:
        return tuple(self._results)

    def set_results(self, values: list[Value]) -> None:
        """Returned values are not recorded in use-lists; `is_result` answers for them."""
        self._results = list(values)

    def set_result(self, index: int, value: Value) -> None:
        self._results[index] = value

    def is_result(self, value: Value) -> bool:
        return any(v is value for v in self._results)

    def values(self) -> Iterator[Value]:
        yield from self.args
        for op in self.ops:
            if op.result is not None:
                yield op.result

    def replace_value(self, old: Value, new: Value) -> None:
        """Replace every use of `old`, including in the returned values."""
        old.replace_all_uses_with(new)
        self._results = [new if v is old else v for v in self._results]

    def erase(self, op: Operation) -> None:
        """Remove an op whose result is unused."""
        if op.result is not None:
            assert not op.result.uses and not self.is_result(op.result), f"{op.name} is used"
        op.drop_operands()
        self.ops.remove(op)

    def insert_before(self, anchor: Operation, new: Operation) -> None:
        self.ops.insert(self.ops.index(anchor), new)


@dataclass
class Module:
    """The unit the compiler works on: a mesh and its functions.

    `localized` is False while types hold global shapes and True after the `localize` pass,
    when every shape (and shape-valued attribute) is per device.
    """

    mesh: MeshShape
    functions: list[Function] = field(default_factory=list)
    localized: bool = False

    @property
    def main(self) -> Function:
        return self.functions[0]
