"""Phase 1 of layout propagation: the layout (dims only) every value would like to have.

Seeds are the pinned layouts: annotated function arguments and the results of ops without a
factor rule (``relayout`` targets). A worklist, first in program order, then revisiting the
neighbours of every value that gets a layout, propagates them forward and backward through
the ops' factor rules: when an op has some tensors with a layout and some without, its
strategy is chosen by cost among the candidates the known layouts suggest (`StrategyChooser`),
and each tensor without a layout receives the strategy's layout for it. A value receives a
layout once and never changes it, so each op is visited at most once per tensor it has, plus
once. A ``relayout`` hands its target back to an operand that has no layout yet; a value's
layout goes at once to the derivatives that hint at it (`hints`). Pending reductions play no
part here; they are decided in phase 2.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from dtensor_compiler.ir.core import Function, Operation, Value
from dtensor_compiler.ir.sharding import Sharding
from dtensor_compiler.passes._factor_sharding import FactorSpaces
from dtensor_compiler.passes._strategy import StrategyChooser

Sources = tuple[str, ...]
"""The annotations a layout was derived from (``%x``, ``out_layouts[0]``), in order."""

DEFAULT_SOURCE = "default: replicated"
"""The source of a layout no annotation reaches."""


def merge_sources(groups: list[Sources]) -> Sources:
    """The sources of a layout derived from layouts with these sources."""
    merged = tuple(dict.fromkeys(s for group in groups for s in group if s != DEFAULT_SOURCE))
    return merged or (DEFAULT_SOURCE,)


@dataclass
class DesiredLayouts:
    """Phase 1's answer: per value, its wanted layout (dims only), the annotations it comes
    from, and the op that handed it over."""

    layouts: dict[Value, Sharding] = field(default_factory=dict)
    sources: dict[Value, Sources] = field(default_factory=dict)
    via: dict[Value, Operation] = field(default_factory=dict)
    """The op that handed a derived layout to the value."""

    def assign(self, value: Value, layout: Sharding, sources: Sources,
               via: Operation | None = None) -> None:
        self.layouts[value] = layout
        self.sources[value] = sources
        if via is not None:
            self.via[value] = via


def desired_layouts(func: Function, pinned: dict[Value, tuple[Sharding, Sources]],
                    spaces: FactorSpaces, chooser: StrategyChooser,
                    hints: Mapping[Value, Sequence[Value]] | None = None) -> DesiredLayouts:
    """Propagate the `pinned` layouts (and the annotations they come from) through `func`.
    `hints` maps a value to the values that would like its layout (its derivatives, from
    the ``cotangent`` hints): each gets it the moment the value does, before its own
    producer (later in the program) is visited."""
    hints = hints or {}
    out = DesiredLayouts()
    queue = deque(func.ops)
    queued = {id(op) for op in func.ops}

    def assigned(values: list[Value]) -> None:
        while values:
            value = values.pop()
            for target in hints.get(value, ()):
                if target not in out.layouts:
                    out.assign(target, out.layouts[value], out.sources[value])
                    values.append(target)
            neighbours = [] if value.owner is None else [value.owner]
            for user in neighbours + value.users:
                if id(user) not in queued:
                    queued.add(id(user))
                    queue.append(user)

    for value, (layout, sources) in pinned.items():
        out.assign(value, layout.without_partial(), sources)
    assigned([v for v in pinned if v in hints])
    while queue:
        op = queue.popleft()
        queued.discard(id(op))
        assigned(_visit(op, out, spaces, chooser))
    return out


def _visit(op: Operation, out: DesiredLayouts, spaces: FactorSpaces, chooser: StrategyChooser
           ) -> list[Value]:
    """Give layouts to the op's tensors that lack one; return those values."""
    space = spaces.of(op)
    if op.name == "relayout_like":  # its result takes the second operand's layout
        result, like = op.result, op.operands[1]
        assert result is not None
        if like not in out.layouts or result in out.layouts:
            return []
        out.assign(result, out.layouts[like], out.sources[like], op)
        return [result]
    if space is None:
        if op.name != "relayout" or op.result not in out.layouts:
            return []
        operand = op.operands[0]
        if operand in out.layouts:
            return []
        out.assign(operand, out.layouts[op.result], out.sources[op.result], op)
        return [operand]
    result = op.result
    assert result is not None, "ops with a factor rule have one result"
    tensors = [*op.operands, result]
    known = [out.layouts.get(v) for v in tensors]
    if all(k is None for k in known) or all(k is not None for k in known):
        return []
    strategy = chooser.choose(space, op, known[:-1], known[-1], layouts=out.layouts)
    sources = merge_sources([out.sources[tensors[t]] for t in strategy.seeds])
    assigned = []
    for t, value in enumerate(tensors):
        if value not in out.layouts:
            out.assign(value, Sharding(space.unproject(strategy.factors, t)), sources, op)
            assigned.append(value)
    return assigned
