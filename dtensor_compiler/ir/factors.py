"""Factor rules: an op's dims stated as factors (an einsum-like signature), and their builders.

A `FactorRule` names the factors of one op (their sizes and kinds) and, for every dim of
every operand and of the result, the factors it is made of, major to minor. One generic
engine (`passes/propagate_layouts.py`) propagates shardings over these rules; an op states
its rule in its definition (`ir/ops/`), built with the helpers here.

- A *pass-through* factor appears in the result: sharding it shards the result dim.
- A *reduced* factor appears only in operands, with the `ReduceOp` that combines it (``sum``
  for a matmul's contracting dim, ``max`` for ``reduce_max``): sharding it leaves the result
  with a pending reduction over those mesh dims.
- A factor that *needs replication* must stay unsharded (argmax's axis, a reshape that mixes
  dims).
- A dim with no factors (a broadcast size-1 dim, a concatenated or sliced dim) must be
  unsharded.

Reshape maps factors through split and merged dims: ``[B,S,D] -> [B,S,H,hd]`` gives operand
dim D the factors (H, hd), so ``{-,-,tp}`` on D becomes ``tp`` on H when tp divides H.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from math import prod

from dtensor_compiler.ir.sharding import ReduceOp
from dtensor_compiler.ir.types import TensorType

DimFactors = tuple[int, ...]
"""The factors of one tensor dim, major to minor."""


class FactorKind(Enum):
    """How a factor may be sharded."""

    PASS_THROUGH = "pass-through"
    REDUCED = "reduced"
    NEEDS_REPLICATION = "needs replication"


@dataclass(frozen=True)
class FactorRule:
    """The factors of one op on given operand and result types."""

    sizes: tuple[int, ...]
    """Size of every factor."""
    kinds: tuple[FactorKind, ...]
    """Kind of every factor."""
    reduce_ops: tuple[ReduceOp | None, ...]
    """Per factor: the reduction of a reduced factor, else None."""
    operands: tuple[tuple[DimFactors, ...], ...]
    """Per operand, per dim: the factors of that dim, major to minor."""
    result: tuple[DimFactors, ...]
    """Per result dim: its factors."""

    def kind(self, factor: int) -> FactorKind:
        return self.kinds[factor]

    def reduce_op(self, factor: int) -> ReduceOp:
        op = self.reduce_ops[factor]
        assert op is not None, f"factor {factor} is not reduced"
        return op


class RuleBuilder:
    """Collects factors, then builds the rule from per-tensor dim factors."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.kinds: list[FactorKind] = []
        self.reduce_ops: list[ReduceOp | None] = []

    def new(self, size: int, kind: FactorKind = FactorKind.PASS_THROUGH,
            reduce_op: ReduceOp | None = None) -> int:
        assert (kind is FactorKind.REDUCED) == (reduce_op is not None)
        self.sizes.append(size)
        self.kinds.append(kind)
        self.reduce_ops.append(reduce_op)
        return len(self.sizes) - 1

    def dim(self, size: int, kind: FactorKind = FactorKind.PASS_THROUGH,
            reduce_op: ReduceOp | None = None) -> DimFactors:
        """A dim of one factor; size-1 dims get none (nothing to shard)."""
        return () if size == 1 else (self.new(size, kind, reduce_op),)

    def build(self, operands: Sequence[Sequence[DimFactors]], result: Sequence[DimFactors]
              ) -> FactorRule:
        return FactorRule(tuple(self.sizes), tuple(self.kinds), tuple(self.reduce_ops),
                          tuple(tuple(o) for o in operands), tuple(result))


def broadcasting(operands: Sequence[TensorType], result: TensorType) -> FactorRule:
    """Elementwise ops with numpy broadcasting: each result dim is one factor, shared by the
    operand dims that are not broadcast into it."""
    b = RuleBuilder()
    res = [b.dim(s) for s in result.shape]
    ops = []
    for t in operands:
        off = result.rank - t.rank
        ops.append([res[off + i] if s == result.shape[off + i] else () for i, s in
                    enumerate(t.shape)])
    return b.build(ops, res)


def einsum(subs: Sequence[str], out: str, operands: Sequence[TensorType]) -> FactorRule:
    """One factor per letter; letters absent from `out` are summed."""
    b = RuleBuilder()
    letters: dict[str, int] = {}
    sizes = {c: s for sub, t in zip(subs, operands) for c, s in zip(sub, t.shape)}
    for c in sorted(sizes, key=lambda c: (c not in out, (out + "".join(subs)).index(c))):
        if sizes[c] > 1:
            letters[c] = (b.new(sizes[c]) if c in out else
                          b.new(sizes[c], FactorKind.REDUCED, ReduceOp.SUM))
    ops = [[(letters[c],) if c in letters else () for c in sub] for sub in subs]
    return b.build(ops, [(letters[c],) if c in letters else () for c in out])


def matmul(a: TensorType, c: TensorType, result: TensorType) -> FactorRule:
    """``[..., x, y] @ [..., y, z]`` with broadcast batch dims."""
    letters = "abcdefghijklmnopqrstuvw"
    nb = result.rank - 2
    batch = letters[:nb]

    def sub(t: TensorType, tail: str) -> str:
        # broadcast batch dims of size 1 get their own letter so they stay unsharded
        off = nb - (t.rank - 2)
        dims = "".join(batch[off + i] if s == result.shape[off + i] else letters[nb + 3 + i]
                       for i, s in enumerate(t.shape[:-2]))
        return dims + tail

    return einsum([sub(a, "xy"), sub(c, "yz")], batch + "xz", [a, c])


def reduction(operand: TensorType, axes: Sequence[int], keepdims: bool,
              kind: FactorKind, reduce_op: ReduceOp | None = None) -> FactorRule:
    """A reduction over `axes`: those dims get factors of `kind` (reduced with `reduce_op`,
    or needing replication), the others pass through."""
    b = RuleBuilder()
    dims = [b.dim(s, kind, reduce_op) if i in axes else b.dim(s)
            for i, s in enumerate(operand.shape)]
    res = [() if i in axes else d for i, d in enumerate(dims)]
    if not keepdims:
        res = [d for i, d in enumerate(res) if i not in axes]
    return b.build([dims], res)


def reshape(src: tuple[int, ...], dst: tuple[int, ...]) -> FactorRule:
    """Factor a reshape into groups: each group of source dims whose product equals a group
    of target dims. Within a group, the row-major orders of both sides are refined into
    common factors, major to minor, while one side's current dim divides the other's rest:
    ``(8, 65536) -> (1024, 512)`` has factors 8, 128, 512, so rows sharded on the source stay
    rows sharded on the target. Where the sizes stop dividing (``(6, 4) -> (4, 6)``), the
    rest of the group becomes one factor that needs replication on every dim it touches. A
    reshape of an empty tensor has no factors: there is nothing to shard."""
    b = RuleBuilder()
    s_out: list[DimFactors] = [() for _ in src]
    d_out: list[DimFactors] = [() for _ in dst]
    if 0 in src or 0 in dst:
        return b.build([s_out], d_out)
    i = j = 0
    while i < len(src) or j < len(dst):
        if i < len(src) and src[i] == 1:
            i += 1
            continue
        if j < len(dst) and dst[j] == 1:
            j += 1
            continue
        gi, gj = [i], [j]
        ps, pd = src[i], dst[j]
        i += 1
        j += 1
        while ps != pd:
            if ps < pd:
                gi.append(i)
                ps *= src[i]
                i += 1
            else:
                gj.append(j)
                pd *= dst[j]
                j += 1
        _refine(b, [k for k in gi if src[k] != 1], [k for k in gj if dst[k] != 1],
                src, dst, s_out, d_out)
    return b.build([s_out], d_out)


def _refine(b: RuleBuilder, gi: list[int], gj: list[int], src: tuple[int, ...],
            dst: tuple[int, ...], s_out: list[DimFactors], d_out: list[DimFactors]) -> None:
    """Give the source dims `gi` and target dims `gj` of one group (equal products) their
    common factors (see `reshape`)."""
    si = sj = 0
    left_s, left_d = src[gi[0]], dst[gj[0]]
    while si < len(gi):
        if left_d % left_s == 0:  # the source dim ends inside (or with) the target dim
            f = b.new(left_s)
            s_out[gi[si]] += (f,)
            d_out[gj[sj]] += (f,)
            left_d //= left_s
            si += 1
            left_s = src[gi[si]] if si < len(gi) else 1
            if left_d == 1:
                sj += 1
                left_d = dst[gj[sj]] if sj < len(gj) else 1
        elif left_s % left_d == 0:  # the target dim ends inside the source dim
            f = b.new(left_d)
            s_out[gi[si]] += (f,)
            d_out[gj[sj]] += (f,)
            left_s //= left_d
            sj += 1
            left_d = dst[gj[sj]]
        else:  # the blocks no longer line up: the rest moves as one replicated factor
            f = b.new(prod(src[k] for k in gi[si + 1:]) * left_s, FactorKind.NEEDS_REPLICATION)
            for k in gi[si:]:
                s_out[k] += (f,)
            for k in gj[sj:]:
                d_out[k] += (f,)
            return
