"""Reverse-mode derivatives: what an op's VJP rule (`OpDef.vjp`) is given, and what rules share.

A rule is called as ``rule(ad, op, cotangent)`` for an op of a global-IR function whose result
the output depends on; `cotangent` is the derivative of the output with respect to the op's
result (its shape and dtype). It returns one cotangent per operand: a value of that operand's
shape and dtype, or None where the operand gets none (an index, a condition, the operand of a
piecewise-constant op, an integer). Rules emit ops through `ad`, at the forward op's source
line, in global IR before layouts are chosen, so propagation and the planner see the forward
and the backward program together.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from dtensor_compiler.errors import Location
from dtensor_compiler.ir import opdef
from dtensor_compiler.ir.attrs import str_attr
from dtensor_compiler.ir.builder import Builder, make_op
from dtensor_compiler.ir.core import Operation, Value
from dtensor_compiler.ir.reasons import UserRelayout
from dtensor_compiler.ir.sharding import Sharding
from dtensor_compiler.ir.types import TensorType, is_floating, numpy_dtype


def differentiable(t: TensorType) -> bool:
    """Whether values of `t` have derivatives: real floating-point dtypes."""
    return is_floating(numpy_dtype(t.dtype))


FullKey = tuple[str, tuple[int, ...], type, object, Location | None, str | None]
"""What makes two ``full`` ops interchangeable: dtype, shape, value and source line
(`full_key`)."""


def full_key(dtype: str, shape: Sequence[int], value: bool | int | float,
             loc: Location | None) -> FullKey:
    """The key of a ``full`` of `value` made at `loc`: a float by its bits (0.0 and -0.0
    differ, so do NaNs of either sign); the line (and numpy function) too, so that a reused
    ``full`` names the line of every use (``x * 2`` in a loop body is one op)."""
    bits = struct.pack("<d", value) if isinstance(value, float) else value
    return (dtype, tuple(shape), type(value), bits, loc, None if loc is None else loc.call)


def unread_operand(v: Value, name: str) -> Value | None:
    """The operand of `v`'s op if that is a `name` op and nothing reads `v` yet (so that the
    op is dead once `v` is not used: dead-code removal drops it)."""
    op = v.owner
    return op.operands[0] if op is not None and op.name == name and not v.uses else None


class VJPContext:
    """Emits the ops of one rule (see the module docstring)."""

    def __init__(self, builder: Builder, loc: Location | None,
                 wanted: Sequence[bool] | None = None,
                 constants: dict[FullKey, Value] | None = None) -> None:
        self._builder = builder
        self.loc = loc
        self._wanted = wanted
        self._constants = {} if constants is None else constants
        """The ``full`` ops of the function so far (the recorder's), which the rules reuse:
        they ask for the same few scalars hundreds of times."""
        self._negations: dict[int, Operation] = {}
        """The ``negative`` ops `negate` made and no op has read yet, by result id: not in
        the function (see `negate`)."""

    def wants(self, operand: int) -> bool:
        """Whether the output depends on operand `operand` (a rule need not compute the
        cotangents nobody reads; dead ones would be removed anyway)."""
        return self._wanted is None or self._wanted[operand]

    def emit(self, name: str, operands: Sequence[Value],
             attrs: dict[str, object] | None = None, result: TensorType | None = None
             ) -> Value:
        """Op `name` at the forward op's line; `result` is the declared type of ops that need
        one (``reshape``, ``broadcast_to``, ``astype``, ``full``)."""
        if self._negations:
            for v in operands:
                negation = self._negations.pop(id(v), None)
                if negation is not None:
                    self._builder.append(negation)  # read after all: it goes in before its reader
        return self._builder.create(name, list(operands), attrs, result, loc=self.loc)

    def negate(self, g: Value) -> Value:
        """``-g``, made but not yet in the function: it goes in when an op of this rule reads
        it, and otherwise the backward pass carries the sign instead (`negation_of`), so a
        negation a rule returns costs no op. ``-(-g)`` is `g`."""
        inner = self._negations.get(id(g))
        if inner is not None:
            return inner.operands[0]
        op = make_op("negative", [g], None, self._builder.ctx, loc=self.loc)
        assert op.result is not None
        self._negations[id(op.result)] = op
        return op.result

    def negation_of(self, v: Value) -> Value | None:
        """`x` if `v` is ``-x`` made by `negate` and not read, or a ``negative`` op's result
        nothing reads yet; else None."""
        negation = self._negations.get(id(v))
        return negation.operands[0] if negation is not None else unread_operand(v, "negative")

    def finish(self) -> None:
        """Discard the negations no op read (their values are carried as signs, or unused)."""
        for op in self._negations.values():
            op.drop_operands()
        self._negations.clear()

    def emit_relayout(self, g: Value, sharding: Sharding) -> Value:
        """`g` in layout `sharding` (the derivative of a user's relayout)."""
        return self._builder.create("relayout", [g], sharding=sharding, loc=self.loc,
                                    why=UserRelayout())

    def emit_relayout_like(self, g: Value, like: Value) -> Value:
        """`g` in the layout `like` ends up with (the derivative of a user's relayout of a
        value whose layout is chosen later)."""
        return self._builder.create("relayout_like", [g, like], loc=self.loc,
                                    why=UserRelayout())

    def full(self, shape: Sequence[int], dtype: str, value: float) -> Value:
        key = full_key(dtype, shape, float(value), self.loc)
        made = self._constants.get(key)
        if made is None:
            made = self._constants[key] = self.emit("full", [], {"value": float(value)},
                                                    TensorType(dtype, tuple(shape)))
        return made

    def scalar(self, value: float, like: Value) -> Value:
        """A 0-d constant of `like`'s dtype (numpy broadcasting does the rest)."""
        return self.full((), like.type.dtype, value)

    def cast(self, g: Value, dtype: str) -> Value:
        if g.type.dtype == dtype:
            return g
        return self.emit("astype", [g], result=TensorType(dtype, g.type.shape))

    def reshape(self, g: Value, shape: Sequence[int]) -> Value:
        if g.type.shape == tuple(shape):
            return g
        return self.emit("reshape", [g], result=TensorType(g.type.dtype, tuple(shape)))

    def transpose(self, g: Value, perm: tuple[int, ...]) -> Value:
        """`g` transposed by `perm`. When `g` is the layout hint of the result of an einsum
        or a transpose that nothing else reads (a rule just made it: the derivative of
        ``q @ k.transpose(...)`` with respect to k), that op is made again with the
        permutation folded in, its output letters permuted or the two permutations
        composed: one op where there would be two (the first is left to dead-code removal,
        with its hint)."""
        hint = g.owner
        if hint is not None and not g.uses and isinstance(opdef.lookup(hint.name).sharding,
                                                          opdef.LayoutHint):
            made = hint.operands[0]
            producer = made.owner
            if producer is not None and len(made.uses) == 1:
                if producer.name == "einsum":
                    spec = str_attr(producer.attrs, "spec")
                    ins, out = spec.split("->")
                    permuted = "".join(out[p] for p in perm)
                    return self.emit("einsum", list(producer.operands),
                                     {"spec": f"{ins}->{permuted}"})
                if producer.name == "transpose":
                    inner = producer.attrs["perm"]
                    assert isinstance(inner, tuple)
                    composed = tuple(inner[p] for p in perm)
                    if composed == tuple(range(len(perm))):
                        return producer.operands[0]
                    return self.emit("transpose", [producer.operands[0]], {"perm": composed})
        return self.emit("transpose", [g], {"perm": perm})

    def broadcast(self, g: Value, shape: Sequence[int]) -> Value:
        if g.type.shape == tuple(shape):
            return g
        return self.emit("broadcast_to", [g], result=TensorType(g.type.dtype, tuple(shape)))

    def unbroadcast(self, g: Value, shape: Sequence[int]) -> Value:
        """`g` summed over the dims numpy broadcasting added or stretched to reach its shape
        from `shape` (the transpose of broadcasting)."""
        shape = tuple(shape)
        if g.type.shape == shape:
            return g
        lead = g.type.rank - len(shape)
        stretched = tuple(lead + i for i, n in enumerate(shape)
                          if n == 1 and g.type.shape[lead + i] != 1)
        if not stretched:  # only dims added in front: the sum drops them
            return self.emit("reduce_sum", [g], {"axes": tuple(range(lead)), "keepdims": False})
        summed = self.emit("reduce_sum", [g], {"axes": tuple(range(lead)) + stretched,
                                               "keepdims": True})
        return self.reshape(summed, shape)

    def to_operand(self, g: Value, operand: Value) -> Value | None:
        """`g`, a cotangent of the broadcast result, as the cotangent of `operand`: summed to
        its shape and cast to its dtype; None for an operand without derivatives."""
        if not differentiable(operand.type):
            return None
        shape = operand.type.shape
        negated = self.negation_of(g)
        if negated is not None and g.type.shape != shape:
            summed = self.unbroadcast(negated, shape)  # (negate the smaller value: the sum)
            return self.cast(self.negate(summed), operand.type.dtype)
        return self.cast(self.unbroadcast(g, shape), operand.type.dtype)
