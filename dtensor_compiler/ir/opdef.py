"""Op definitions: one record per op holds everything the compiler knows about it.

An `OpDef` states, for one op name:

- its operand count, result count and typed attributes (`attrs.AttrSpec`);
- shape and dtype inference (`infer`), or that the result type is declared (``reshape``);
- its effects (none for a pure op) and traits (elementwise, commutative, the reduction it
  computes, which pending reductions it lets through, which operands it is linear in);
- how it shards: a factor rule (`Factors`), an explicit `Barrier` that says which layouts
  its operands need, or a `LayoutHint` that only suggests one;
- whether constant folding evaluates it (with the numpy backend's kernel), and for a source
  the value it stands for;
- when an instance is an identity (simplify removes it);
- the levels it is legal at, its localize hook, its collective facts (`collective`), and its
  VJP rule (`vjp`, see `ir/vjp.py`);
- what it needs of padding (`reads_padding`: which operand dims must hold which reduction's
  identity there, derived from the factor rule unless stated) and whether it fills its
  result's padding (`fills`, the ``mask`` op).

Definitions live by family in `ir/ops/` and are registered there with `register`; importing
`dtensor_compiler.ir` registers them all. Backends register one kernel per definition (see
`runtime/`). Nothing else in the compiler keeps per-op tables.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

import numpy as np

from dtensor_compiler.ir.attrs import Attr, AttrSpec
from dtensor_compiler.ir.collective import CollectiveDef
from dtensor_compiler.ir.core import Level, Operation, Value
from dtensor_compiler.ir.factors import FactorRule
from dtensor_compiler.ir.mesh_shape import MeshShape
from dtensor_compiler.ir.sharding import ReduceOp, Sharding
from dtensor_compiler.ir.types import TensorType

if TYPE_CHECKING:
    from dtensor_compiler.ir.vjp import VJPContext

Shape = tuple[int, ...]
Attrs = Mapping[str, Attr]
ResultSig = tuple[str, Shape]
"""A result's dtype name and shape, as inference gives them."""


class Effect(Enum):
    """What an op does besides computing its results. An op with effects is never merged by
    CSE, removed by DCE or moved past another op."""

    READ = "read"
    """Reads state outside the program (files)."""
    WRITE = "write"
    """Writes state outside the program."""
    SYNC = "sync"
    """Waits for other devices or processes."""


@dataclass(frozen=True)
class AllOperands:
    """`Traits.linear_in` for ops linear in each of their operands, however many."""


ALL_OPERANDS = AllOperands()


@dataclass(frozen=True)
class Traits:
    """Algebraic facts about an op that passes rely on."""

    elementwise: bool = False
    """Each result element depends only on the operand elements at the same (broadcast)
    index."""
    commutative: bool = False
    """The operands may be swapped (two-operand ops)."""
    reduction: ReduceOp | None = None
    """The reduction the op computes over its reduced axes (``reduce_sum``: sum)."""
    commutes_with: frozenset[ReduceOp] = frozenset()
    """Pending reductions of these kinds may be applied after the op instead of before it,
    when every operand carries the same ones: ``f(R x_i, R y_i) = R f(x_i, y_i)``
    (``add`` and sum, ``maximum`` and max, ``reshape`` and every kind)."""
    linear_in: tuple[int, ...] | AllOperands = ()
    """Operands the op is linear in, each with the others fixed (``multiply``: all,
    ``divide``: the numerator): a pending sum on one of them, and on no other operand, may be
    applied after the op."""

    def is_linear_in(self, operand: int) -> bool:
        return isinstance(self.linear_in, AllOperands) or operand in self.linear_in


FactorRuleFn = Callable[[Attrs, Sequence[TensorType], TensorType], FactorRule]


@dataclass(frozen=True)
class Factors:
    """The op shards by a factor rule of its attributes, operand types and result type."""

    rule: FactorRuleFn


OperandLayouts = Callable[[Operation], tuple[Sharding | None, ...]]
"""The layout each operand of an op must have; None where any layout will do."""


def whole_operands(op: Operation) -> tuple[Sharding | None, ...]:
    """Every operand replicated, with no pending reduction."""
    return tuple(Sharding.replicated(v.type.rank) for v in op.operands)


def operands_as_they_are(op: Operation) -> tuple[Sharding | None, ...]:
    """Any layout, pending reductions included (``relayout`` and the collectives)."""
    return (None,) * len(op.operands)


@dataclass(frozen=True)
class Barrier:
    """The op has no factor rule: propagation does not look through it. Its operands must
    have the layouts `operands` gives; its results keep their declared layouts (replicated
    where none is declared)."""

    operands: OperandLayouts = whole_operands


@dataclass(frozen=True)
class LayoutHint:
    """The op is its first operand, and says which layout would suit it: the layout its
    second operand has (dims only). Phase 1 of layout propagation gives that layout to a
    first operand nothing has decided yet, as soon as the second operand has one; then the
    op is removed, before any layout is chosen for good (``cotangent``: a derivative wants
    the layout of the value it is the derivative of)."""


@dataclass(frozen=True)
class InferContext:
    """What shape inference needs besides the operands: the mesh and the module's level."""

    mesh: MeshShape
    level: Level = Level.GLOBAL


InferFn = Callable[[Sequence[TensorType], Attrs, Sequence[TensorType], InferContext],
                   Sequence[ResultSig]]
"""``infer(operand types, attrs, declared result types, ctx)``: one (dtype, shape) per
result; raises ValueError when the operands or attributes do not fit."""

LocalizeFn = Callable[[Operation, MeshShape], dict[str, Attr]]
"""Rewrites an op's shape-valued attributes into per-device terms (given the op with its
global types); ValueError when the op cannot be localized so."""

@dataclass(frozen=True)
class PaddingRead:
    """An op reads the padding of operand `operand` along `dims` as if it held the identity
    of `fill` (a reduction over a padded dim, a contraction over one, a lookup by padded
    indices): the mask-padding pass puts it there first, where those dims have padding."""

    operand: int
    dims: tuple[int, ...]
    fill: ReduceOp


PaddingReads = Callable[[Operation], list[PaddingRead]]
"""An op's padding reads, stated by its definition; the default derives them from the factor
rule: every operand dim made of one reduced factor reads its padding as that factor's
reduction's identity (zeros for a contracted dim, in both operands)."""

VJPRule = Callable[["VJPContext", Operation, Value], Sequence[Value | None]]
"""Reverse-mode derivative of an op: ``rule(ad, op, cotangent)`` gives one cotangent per
operand, None where an operand gets none (see `ir.vjp`)."""

GLOBAL_AND_LOCAL = frozenset({Level.GLOBAL, Level.LOCAL})


def same_type(op: Operation) -> bool:
    """An `OpDef.identity` test: the result type, layout included, is the operand's."""
    return op.type == op.operands[0].type


@dataclass(frozen=True, kw_only=True)
class OpDef:
    """Everything about one op (see the module docstring)."""

    name: str
    operands: int | None
    """Exact operand count, or None for variadic (one or more)."""
    infer: InferFn
    sharding: Factors | Barrier | LayoutHint
    folds: bool
    """Whether constant folding evaluates the op when all its operands are constants."""
    results: int = 1
    attrs: tuple[AttrSpec, ...] = ()
    """In printing order."""
    declared_type: bool = False
    """The result type is declared by whoever creates the op, not inferred from operands."""
    traits: Traits = field(default_factory=Traits)
    effects: frozenset[Effect] = frozenset()
    levels: frozenset[Level] = GLOBAL_AND_LOCAL
    """The module levels at which the op may appear."""
    localize: LocalizeFn | None = None
    identity: Callable[[Operation], bool] | None = None
    """Whether an instance returns its only operand unchanged, which simplify removes
    (``reshape`` to the same shape, ``transpose`` by the identity)."""
    value: Callable[[Operation], np.ndarray] | None = None
    """The value a source op stands for at compile time (``constant``, ``full``), which
    constant folding starts from."""
    collective: CollectiveDef | None = None
    calls: str | None = None
    """The attribute naming a function of the module that the op runs (``kernel``): its
    operands are that function's arguments and its results the function's, type for type."""
    reads_padding: PaddingReads | None = None
    fills: Callable[[Operation], ReduceOp] | None = None
    """The reduction whose identity the op leaves in its result's padding (``mask``); None
    for every other op, whose result padding holds garbage."""
    vjp: VJPRule | None = None

    @property
    def pure(self) -> bool:
        return not self.effects

    # -- attributes ------------------------------------------------------------------------------
    def make_attrs(self, given: Mapping[str, object]) -> dict[str, Attr]:
        """`given` coerced to the attribute kinds, with defaults filled in; ValueError for an
        unknown, missing or ill-typed attribute."""
        out: dict[str, Attr] = {}
        found = 0
        for spec in self.attrs:
            if spec.name in given:
                out[spec.name] = spec.coerce(given[spec.name])
                found += 1
            elif spec.required:
                raise ValueError(f"missing attribute {spec.name!r}")
            else:
                out[spec.name] = spec.coerce(spec.default)
        if found != len(given):
            unknown = sorted(set(given) - {a.name for a in self.attrs})
            raise ValueError(f"unknown attribute {unknown[0]!r}")
        return out

    def attr_problems(self, attrs: Attrs) -> list[str]:
        """What is wrong with an op's stored attributes."""
        names = {a.name for a in self.attrs}
        out = [f"{self.name} has no attribute {k!r}" for k in sorted(attrs) if k not in names]
        for spec in self.attrs:
            if spec.name not in attrs:
                out.append(f"{self.name} is missing attribute {spec.name!r}")
                continue
            problem = spec.problem(attrs[spec.name])
            if problem is not None:
                out.append(f"{self.name}: {problem}")
        return out

    # -- sharding --------------------------------------------------------------------------------
    def carried(self, partials: Sequence[Mapping[str, ReduceOp]],
                operands: Sequence[TensorType], result: TensorType
                ) -> dict[str, ReduceOp] | None:
        """The pending reductions the result keeps when the operands carry `partials`; None
        when the op cannot take them (they must be reduced first); empty when nothing is
        pending. Follows from `traits`.

        A pending reduction combines its pieces in the operand's own dtype (a bool sum is an
        ``or``, an int8 sum wraps), so only an op whose result keeps that dtype can carry it.
        """
        pending = [(i, p) for i, p in enumerate(partials) if p]
        if not pending:
            return {}
        if any(operands[i].dtype != result.dtype for i, _ in pending):
            return None
        kinds = {op for _, p in pending for op in p.values()}
        first = partials[0]
        if kinds <= self.traits.commutes_with and all(p == first for p in partials):
            return dict(first)
        if kinds == {ReduceOp.SUM} and len(pending) == 1 and self.traits.is_linear_in(
                pending[0][0]):
            return dict(pending[0][1])
        return None


_REGISTRY: dict[str, OpDef] = {}


def register(opdef: OpDef) -> OpDef:
    """Make `opdef` known to the compiler under its name; returns it."""
    if opdef.name in _REGISTRY:
        raise ValueError(f"op {opdef.name!r} is defined twice")
    if opdef.results != 1 and not isinstance(opdef.sharding, Barrier):
        raise ValueError(f"{opdef.name}: a factor rule describes one result; an op with "
                         f"{opdef.results} results must be a Barrier")
    if opdef.folds and (opdef.results != 1 or opdef.effects):
        raise ValueError(f"{opdef.name}: only a pure op with one result can be folded")
    if opdef.effects and not isinstance(opdef.sharding, Barrier):
        raise ValueError(f"{opdef.name}: an effectful op must be a Barrier that states the "
                         "layouts its operands need")
    _REGISTRY[opdef.name] = opdef
    return opdef


def lookup(name: str) -> OpDef:
    """The definition of op `name`; KeyError for an unknown op."""
    opdef = _REGISTRY.get(name)
    if opdef is None:
        raise KeyError(f"unknown op {name!r}")
    return opdef


def find(name: str) -> OpDef | None:
    return _REGISTRY.get(name)


def registered() -> list[OpDef]:
    """Every definition, in the order they were registered."""
    return list(_REGISTRY.values())


def collectives() -> list[OpDef]:
    """The definitions of the collectives, in the order they were registered."""
    return [d for d in _REGISTRY.values() if d.collective is not None]
