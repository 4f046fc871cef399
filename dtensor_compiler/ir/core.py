"""IR data structures: values, operations, functions and modules.

One flat function body of operations in SSA form; an op has zero, one or several results. Use
lists are kept in sync only through `Operation.set_operand` / `Value.replace_all_uses_with`;
never mutate `Value.uses` or `Operation._operands` directly. Names are assigned by the printer,
except for function arguments, which keep the user's parameter names.

Attributes are typed Python values (`attrs.Attr`); the op's definition (`opdef.OpDef`) says
which attributes it has and of what kind. Layout facts live in the value's
`TensorType.sharding` and in typed fields such as `Value.origin`, never in attributes; why
an op is there is a typed `Reason` in `Operation.why`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import Enum

from dtensor_compiler.errors import Location
from dtensor_compiler.ir.attrs import Attr
from dtensor_compiler.ir.mesh_shape import MeshShape
from dtensor_compiler.ir.reasons import OpRef, Reason
from dtensor_compiler.ir.types import TensorType


class Level(Enum):
    """What a module's shapes mean, and so which ops it may hold."""

    GLOBAL = "global"
    """Shapes are global; layouts are being chosen (tracing up to insert-collectives)."""
    LOCAL = "local"
    """Shapes are per device; every layout change is an explicit collective."""


@dataclass(frozen=True)
class LayoutOrigin:
    """Why a value has its layout: the annotation it came from and the op that carried it
    (``printer.format_origin`` renders it)."""

    source: str
    """The annotations the layout was derived from (``%x``, ``out_layouts[0]``, several joined
    by commas) or a rule (``default: replicated``)."""
    via: OpRef | None = None
    """The op that propagated it, if any."""


class Value:
    """An SSA value: a function argument or a result of an operation."""

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
        if other is self:
            return
        uses, self.uses = self.uses, []
        for op, i in uses:
            operands = op._operands
            op._operands = operands[:i] + (other,) + operands[i + 1:]
        other.uses.extend(uses)

    def __repr__(self) -> str:
        return f"<Value {self.name_hint or ''}: {self.type}>"


class Operation:
    """One op: a registered name, operands, attributes and its results."""

    __slots__ = ("name", "_operands", "results", "result", "attrs", "loc", "why", "source")

    def __init__(self, name: str, operands: Iterable[Value],
                 result_types: Sequence[TensorType] = (),
                 attrs: dict[str, Attr] | None = None, loc: Location | None = None,
                 why: Reason | None = None) -> None:
        self.name = name
        self._operands: tuple[Value, ...] = tuple(operands)
        self.attrs: dict[str, Attr] = dict(attrs or {})
        self.loc = loc
        self.source: tuple[int, int] | None = None
        """Line and column of the op in the IR text it was parsed from, if it was."""
        self.why = why
        self.results: tuple[Value, ...] = tuple([Value(t, self) for t in result_types])
        self.result: Value | None = self.results[0] if len(self.results) == 1 else None
        """The only result; None for an op without results or with several (read those
        through `results`)."""
        for i, v in enumerate(self._operands):
            v.uses.append((self, i))

    @property
    def operands(self) -> tuple[Value, ...]:
        return self._operands

    def set_operand(self, index: int, value: Value) -> None:
        operands = self._operands
        operands[index].uses.remove((self, index))
        self._operands = operands[:index] + (value,) + operands[index + 1:]
        value.uses.append((self, index))

    def drop_operands(self) -> None:
        """Detach from all operands and from the results (whose `owner` becomes None), before
        erasing the op: with no reference cycle through its results, reference counting
        frees the op at once instead of leaving it to the cyclic collector."""
        for i, v in enumerate(self._operands):
            v.uses.remove((self, i))
        self._operands = ()
        for r in self.results:
            r.owner = None

    @property
    def type(self) -> TensorType:
        """The type of the only result."""
        result = self.result
        assert result is not None, f"{self.name} has no result"
        return result.type

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
        self._returned: Counter[int] = Counter()
        """How often each returned value (by id) is returned."""
        self.set_results(results or [])

    @property
    def results(self) -> tuple[Value, ...]:
        return tuple(self._results)

    def set_results(self, values: Sequence[Value]) -> None:
        """Returned values are not recorded in use-lists; `is_result` answers for them."""
        self._results = list(values)
        self._returned = Counter(id(v) for v in self._results)

    def set_result(self, index: int, value: Value) -> None:
        old = self._results[index]
        self._returned[id(old)] -= 1
        if not self._returned[id(old)]:
            del self._returned[id(old)]
        self._results[index] = value
        self._returned[id(value)] += 1

    def is_result(self, value: Value) -> bool:
        return id(value) in self._returned

    def values(self) -> Iterator[Value]:
        yield from self.args
        for op in self.ops:
            yield from op.results

    def replace_value(self, old: Value, new: Value) -> None:
        """Replace every use of `old`, including in the returned values."""
        old.replace_all_uses_with(new)
        if self.is_result(old):
            for i, v in enumerate(self._results):
                if v is old:
                    self.set_result(i, new)

    def erase(self, op: Operation) -> None:
        """Remove an op whose results are unused."""
        for result in op.results:
            assert not result.uses and not self.is_result(result), f"{op.name} is used"
        op.drop_operands()
        self.ops.remove(op)

    def insert_before(self, anchor: Operation, new: Operation) -> None:
        self.ops.insert(self.ops.index(anchor), new)


@dataclass
class Module:
    """The unit the compiler works on: a mesh, its functions and their level.

    `entry` names the function that runs when the module is executed (the traced function);
    a module of one function may leave it unset, and one that only passes transform (a golden
    file with several functions) need not name one.
    """

    mesh: MeshShape
    functions: list[Function] = field(default_factory=list)
    level: Level = Level.GLOBAL
    entry: str | None = None

    @property
    def main(self) -> Function:
        """The entry function; KeyError when there is none."""
        if self.entry is None:
            if len(self.functions) != 1:
                raise KeyError(f"the module has {len(self.functions)} functions and names no "
                               "entry")
            return self.functions[0]
        for func in self.functions:
            if func.name == self.entry:
                return func
        raise KeyError(f"the module's entry @{self.entry} is not one of its functions")

    def function(self, name: str) -> Function | None:
        """The function called `name`, if the module has one."""
        return next((f for f in self.functions if f.name == name), None)
