"""Why an op is in the IR: typed records, turned into text only by the printer.

A ``relayout`` and every collective made from it carry a `Reason` in `Operation.why`. Passes
build them from facts (which op needs which operand in which layout, and because of what);
`printer.format_reason` renders them as the ``// why:`` comment and the explain table's text.
No code reads a reason's text; passes ask the records (`explains_pending`, `locations`).

A reason read back from IR text is `Written`: the text as it was.
"""

from __future__ import annotations

from dataclasses import dataclass

from dtensor_compiler.errors import Location
from dtensor_compiler.ir.sharding import ReduceOp, Sharding

Reductions = tuple[tuple[str, ReduceOp], ...]
"""Pending reductions: (mesh dim, reduction) pairs."""


@dataclass(frozen=True)
class OpRef:
    """An op as the user knows it: its name and source line (``matmul at f.py:3``)."""

    name: str
    loc: Location | None = None


@dataclass(frozen=True)
class ValueRef:
    """A value as the user knows it: an argument by name (``%x``), or the result of an op
    (``the tanh result from f.py:3``)."""

    arg: str | None = None
    producer: OpRef | None = None


# -- causes: why one operand needs another layout -----------------------------------------------


@dataclass(frozen=True)
class PendingNotTaken:
    """``add cannot take a pending sum over tp``."""

    taker: str
    """The op name, or ``a returned value``."""
    reductions: Reductions


@dataclass(frozen=True)
class ReducedAnyway:
    """``divide takes it reduced: the pending sum over tp is reduced for another consumer
    anyway``."""

    taker: str
    reductions: Reductions


@dataclass(frozen=True)
class NeedsWholeDim:
    """``argmax needs dim 1 whole``."""

    op: str
    dim: int


@dataclass(frozen=True)
class DimSharded:
    """``dim 0 is sharded on dp`` (``contracted dim 1 ...`` for a contracted dim)."""

    dim: int
    mesh_dims: tuple[str, ...]
    contracted: bool


@dataclass(frozen=True)
class Destination:
    """Where a mesh dim went: a dim of the operand itself, of the result, or of another
    operand (`value`)."""

    dim: int
    of_result: bool = False
    value: ValueRef | None = None


@dataclass(frozen=True)
class DimGivesUp:
    """``dim 1 gives up dp to dim 0 of the result``."""

    dim: int
    mesh_dim: str
    to: Destination | None


@dataclass(frozen=True)
class NeedsLayout:
    """An op without a factor rule needs the operand as its definition says."""

    op: str
    target: Sharding


Cause = (PendingNotTaken | ReducedAnyway | NeedsWholeDim | DimSharded | DimGivesUp
         | NeedsLayout)


@dataclass(frozen=True)
class WantedResultLayout:
    """`OperandRelayout.matched`: the layout wanted for the consumer's result."""


# -- reasons --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OperandRelayout:
    """``add at f.py:4 needs %b as {dp, -}: dim 0 is sharded on dp (to match %a)``."""

    consumer: OpRef
    operand: ValueRef
    target: Sharding
    causes: tuple[Cause, ...]
    matched: tuple[ValueRef | WantedResultLayout, ...] = ()
    """The tensors whose layouts the consumer's strategy keeps, when worth saying."""


@dataclass(frozen=True)
class OutLayout:
    """The user asked for a function's output layout: ``out_layouts[0] of mlp``."""

    index: int
    function: str


@dataclass(frozen=True)
class UserRelayout:
    """The user called ``dtc.relayout`` (or ``copy_to_mesh``) in traced code."""


@dataclass(frozen=True)
class Requested:
    """A pinned layout whose relayout came with no reason: ``out_layouts[0] asks for {-}``."""

    source: str
    """The annotation the layout comes from (``out_layouts[0]``, ``%x``)."""
    target: Sharding


@dataclass(frozen=True)
class ReturnedPending:
    """``returned value 0 (the multiply result): a returned value cannot take a pending sum
    over tp``."""

    index: int
    value: ValueRef
    reductions: Reductions


@dataclass(frozen=True)
class PendingSource:
    """The op that left a pending reduction a collective resolves."""

    op: OpRef
    reductions: tuple[ReduceOp, ...]
    mesh_dims: tuple[str, ...]


@dataclass(frozen=True)
class Planned:
    """A collective that carries out (part of) a relayout to `target`: the relayout's reason
    (None when it had none), and where the pending reduction it resolves came from (when the
    relayout's reason does not say so already)."""

    relayout: Reason | None
    target: Sharding
    pending: PendingSource | None = None


@dataclass(frozen=True)
class Writes:
    """A checkpoint writer: ``device 4 writes w[4:8, 0:16], b (320 B)``."""

    device: int
    slices: tuple[tuple[str, str], ...]
    """(tensor name, box text or empty for the whole tensor) of every slice it writes."""
    nbytes: int


@dataclass(frozen=True)
class SharedRead:
    """A restore that reads each block once per group of `readers` devices holding it and
    gathers it over `mesh_dims`, because that costs less than every device reading it."""

    name: str
    readers: int
    mesh_dims: tuple[str, ...]
    shared_seconds: float
    direct_seconds: float


@dataclass(frozen=True)
class Written:
    """A reason given as text (read from IR)."""

    text: str


Reason = (OperandRelayout | OutLayout | UserRelayout | Requested | ReturnedPending | Planned
          | Writes | SharedRead | Written)


def explains_pending(reason: Reason) -> bool:
    """Whether `reason` already says which pending reduction had to be resolved."""
    if isinstance(reason, ReturnedPending):
        return True
    if isinstance(reason, OperandRelayout):
        return any(isinstance(c, (PendingNotTaken, ReducedAnyway)) for c in reason.causes)
    if isinstance(reason, Planned):
        return reason.pending is not None or (reason.relayout is not None
                                              and explains_pending(reason.relayout))
    return False


def locations(reason: Reason) -> set[Location]:
    """The source locations `reason` names."""
    if isinstance(reason, OperandRelayout):
        refs = [reason.operand, *(m for m in reason.matched if isinstance(m, ValueRef))]
        refs += [c.to.value for c in reason.causes
                 if isinstance(c, DimGivesUp) and c.to is not None and c.to.value is not None]
        out = {r.producer.loc for r in refs if r.producer is not None and r.producer.loc}
        return out | ({reason.consumer.loc} if reason.consumer.loc else set())
    if isinstance(reason, ReturnedPending):
        producer = reason.value.producer
        return {producer.loc} if producer is not None and producer.loc else set()
    if isinstance(reason, Planned):
        pending = reason.pending
        extra = {pending.op.loc} if pending is not None and pending.op.loc else set()
        return (set() if reason.relayout is None else locations(reason.relayout)) | extra
    return set()
