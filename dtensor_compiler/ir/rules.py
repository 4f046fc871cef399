"""Sharding rules as data: every op's dims stated as factors (an einsum-like signature).

A `FactorRule` names the op's factors (their sizes and kinds) and, for every dim of every
operand and of the result, the factors it is made of, major to minor. One generic engine
(`passes/propagate_layouts.py`) propagates shardings over these rules; nothing else in the
compiler needs to know an op's sharding behaviour.

- A factor that appears in the result is *pass-through*: sharding it shards the result dim.
- A factor that appears only in operands is *reduced* with `FactorRule.reductions[f]`
  (``"sum"`` for a matmul's contracting dim, ``"max"`` for ``reduce_max``): sharding it leaves
  the result with a pending partial reduction over those mesh dims.
- A factor with reduction ``"replicate"`` must stay unsharded (argmax's axis, sliced dims).
- A dim with no factors (a broadcast size-1 dim, a concatenated or sliced dim) must be
  unsharded.

Reshape maps factors through split and merged dims: ``[B,S,D] -> [B,S,H,hd]`` gives operand
dim D the factors (H, hd), so ``{-,-,tp}`` on D becomes ``tp`` on H when tp divides H.

`partial_result` says which pending partial reductions an op lets through unchanged (the
first-class partial state): linear ops carry a pending sum, ``maximum`` carries a pending max.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dtensor_compiler.ir.opdefs import (
    BINARY_UFUNCS,
    REDUCTIONS,
    UNARY_UFUNCS,
    parse_einsum,
)
from dtensor_compiler.ir.types import TensorType

REPLICATE = "replicate"
DimFactors = tuple[int, ...]


@dataclass(frozen=True)
class FactorRule:
    sizes: tuple[int, ...]
    """Size of every factor."""
    operands: tuple[tuple[DimFactors, ...], ...]
    """Per operand, per dim: the factors of that dim, major to minor."""
    result: tuple[DimFactors, ...]
    """Per result dim: its factors."""
    reductions: tuple[str | None, ...]
    """Per factor: None (pass-through), a reduce op (absent from the result), or REPLICATE."""

    def kind(self, factor: int) -> str | None:
        return self.reductions[factor]


class _Builder:
    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.reductions: list[str | None] = []

    def new(self, size: int, reduction: str | None = None) -> int:
        self.sizes.append(size)
        self.reductions.append(reduction)
        return len(self.sizes) - 1

    def dim(self, size: int, reduction: str | None = None) -> DimFactors:
        """A dim of one factor; size-1 dims get none (nothing to shard)."""
        return () if size == 1 else (self.new(size, reduction),)

    def build(self, operands, result) -> FactorRule:
        return FactorRule(tuple(self.sizes), tuple(tuple(o) for o in operands), tuple(result),
                          tuple(self.reductions))


def _broadcasting(operands: Sequence[TensorType], result: TensorType) -> FactorRule:
    b = _Builder()
    res = [b.dim(s) for s in result.shape]
    ops = []
    for t in operands:
        off = result.rank - t.rank
        ops.append([res[off + i] if s == result.shape[off + i] else () for i, s in
                    enumerate(t.shape)])
    return b.build(ops, res)


def _einsum_rule(subs: Sequence[str], out: str, operands: Sequence[TensorType]) -> FactorRule:
    b = _Builder()
    letters: dict[str, int] = {}
    sizes = {c: s for sub, t in zip(subs, operands) for c, s in zip(sub, t.shape)}
    for c in sorted(sizes, key=lambda c: (c not in out, (out + "".join(subs)).index(c))):
        if sizes[c] > 1:
            letters[c] = b.new(sizes[c], None if c in out else "sum")
    ops = [[(letters[c],) if c in letters else () for c in sub] for sub in subs]
    return b.build(ops, [(letters[c],) if c in letters else () for c in out])


def _matmul_rule(a: TensorType, c: TensorType, result: TensorType) -> FactorRule:
    letters = "abcdefghijklmnopqrstuvw"
    nb = result.rank - 2
    batch = letters[:nb]
    # broadcast batch dims of size 1 get their own letter so they stay unsharded
    def sub(t: TensorType, tail: str) -> str:
        off = nb - (t.rank - 2)
        dims = "".join(batch[off + i] if s == result.shape[off + i] else letters[nb + 3 + i]
                       for i, s in enumerate(t.shape[:-2]))
        return dims + tail
    rule = _einsum_rule([sub(a, "xy"), sub(c, "yz")], batch + "xz", [a, c])
    return rule


def reshape_factors(src: tuple[int, ...], dst: tuple[int, ...], b: _Builder
                    ) -> tuple[list[DimFactors], list[DimFactors]]:
    """Factor a reshape into groups: each group of source dims whose product equals a group
    of target dims. A group of one dim on either side splits or merges exactly; any other
    group becomes one replicate factor on every dim it touches."""
    s_out: list[DimFactors] = [() for _ in src]
    d_out: list[DimFactors] = [() for _ in dst]
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
        gi = [k for k in gi if src[k] != 1]
        gj = [k for k in gj if dst[k] != 1]
        if len(gi) == 1 or len(gj) == 1:
            many, one, out_many, out_one = (gj, gi, d_out, s_out) if len(gi) == 1 else (
                gi, gj, s_out, d_out)
            sizes = dst if many is gj else src
            fs = tuple(b.new(sizes[k]) for k in many)
            for k, f in zip(many, fs):
                out_many[k] = (f,)
            out_one[one[0]] = fs
        else:
            f = b.new(ps, REPLICATE)
            for k in gi:
                s_out[k] = (f,)
            for k in gj:
                d_out[k] = (f,)
    return s_out, d_out


def factor_rule(name: str, attrs: dict, operands: Sequence[TensorType],
                result: TensorType) -> FactorRule | None:
    """The rule of one op on global shapes, or None for ops propagation treats as barriers
    (``relayout`` and the collectives)."""
    b = _Builder()
    if name in UNARY_UFUNCS or name in BINARY_UFUNCS or name in ("where", "astype"):
        return _broadcasting(operands, result)
    if name == "broadcast_to":
        return _broadcasting(operands, result)
    if name == "matmul":
        return _matmul_rule(operands[0], operands[1], result)
    if name == "einsum":
        subs, out = parse_einsum(attrs["spec"], len(operands))
        return _einsum_rule(subs, out, operands)
    if name in REDUCTIONS:
        t = operands[0]
        axes = set(attrs["axes"])
        dims = [b.dim(s, REDUCTIONS[name] if i in axes else None) for i, s in enumerate(t.shape)]
        res = [() if i in axes else d for i, d in enumerate(dims)]
        if not attrs["keepdims"]:
            res = [d for i, d in enumerate(res) if i not in axes]
        return b.build([dims], res)
    if name in ("argmax", "argmin"):
        t = operands[0]
        axis = attrs["axis"]
        dims = [b.dim(s, REPLICATE if i == axis else None) for i, s in enumerate(t.shape)]
        res = [() if i == axis else d for i, d in enumerate(dims)]
        if not attrs["keepdims"]:
            res = [d for i, d in enumerate(res) if i != axis]
        return b.build([dims], res)
    if name == "transpose":
        dims = [b.dim(s) for s in operands[0].shape]
        return b.build([dims], [dims[p] for p in attrs["perm"]])
    if name == "reshape":
        s, d = reshape_factors(operands[0].shape, result.shape, b)
        return b.build([s], d)
    if name == "concatenate":
        axis = attrs["axis"]
        res = [() if i == axis else b.dim(s) for i, s in enumerate(result.shape)]
        return b.build([res for _ in operands], res)
    if name == "slice":
        t = operands[0]
        res = [b.dim(s) if (st, sp, k) == (0, s, 1) else () for s, st, sp, k in
               zip(t.shape, attrs["start"], attrs["stop"], attrs["step"])]
        return b.build([res], res)
    if name == "take":
        table, idx = operands
        axis = attrs["axis"]
        tdims = [() if i == axis else b.dim(s) for i, s in enumerate(table.shape)]
        idims = [b.dim(s) for s in idx.shape]
        return b.build([tdims, idims], tdims[:axis] + idims + tdims[axis + 1:])
    if name in ("constant", "full", "iota"):
        return b.build([], [b.dim(s) for s in result.shape])
    return None


def partial_result(name: str, attrs: dict, partials: Sequence[dict[str, str]],
                   operands: Sequence[TensorType], result: TensorType
                   ) -> dict[str, str] | None:
    """The pending reductions an op's result keeps when its operands carry `partials`.

    None means the op cannot take these partial operands: they must be reduced first.
    An empty dict means nothing is pending.

    A pending reduction combines its pieces in the operand's own dtype (a bool sum is an
    ``or``, an int8 sum wraps), so only an op whose result keeps that dtype can carry it: one
    that converts it (a bool or int8 sum counted in int64, f16 widened to f32) would combine
    the pieces in the new dtype and get another value.
    """
    pending = [p for p in partials if p]
    if not pending:
        return {}
    if any(p and t.dtype != result.dtype for p, t in zip(partials, operands)):
        return None
    structural = ("reshape", "transpose", "slice", "broadcast_to", "positive")
    if name in structural and len(partials) == 1:
        return dict(partials[0])
    ops = {op for p in pending for op in p.values()}
    if name in ("negative",) and ops == {"sum"}:
        return dict(partials[0])
    if name in ("add", "subtract", "concatenate") and ops == {"sum"}:
        return dict(partials[0]) if all(p == partials[0] for p in partials) else None
    if name in ("maximum", "fmax") and ops == {"max"} or name in ("minimum", "fmin") and ops == {
            "min"}:
        return dict(partials[0]) if all(p == partials[0] for p in partials) else None
    if name in ("multiply", "matmul", "einsum") and ops == {"sum"} and len(pending) == 1:
        return dict(pending[0])
    if name == "divide" and ops == {"sum"} and partials[0] and not partials[1]:
        return dict(partials[0])
    if name in REDUCTIONS and len(partials) == 1:
        kind = REDUCTIONS[name]
        if set(partials[0].values()) == {kind} and kind in ("sum", "max", "min"):
            return dict(partials[0])
    return None
