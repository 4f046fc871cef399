"""What a fused kernel's body may hold: the ops the fuse pass groups, when an op may join the
group of its consumers (`may_join`), the row space of a group with row reductions and the
subscripts of a contraction. The fuse pass decides groups by these rules and code
generators read the same rules back off a body, so the two cannot disagree.

A group is one of three kinds: elementwise ops alone; a *row group*, with row reductions
among them (`row_space`); a *contraction group*, one contraction (``matmul`` or a
two-operand ``einsum`` of floats) as its first op, with the elementwise ops after it (its
epilogue, on values of its result's shape) and nothing feeding it (its operands are the
group's inputs).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dtensor_compiler.ir import opdef
from dtensor_compiler.ir.attrs import str_attr
from dtensor_compiler.ir.core import Operation
from dtensor_compiler.ir.inference import parse_einsum
from dtensor_compiler.ir.ops.contractions import EINSUM, MATMUL, matmul_letters
from dtensor_compiler.ir.ops.reductions import REDUCTIONS
from dtensor_compiler.ir.ops.shape import BROADCAST_TO
from dtensor_compiler.ir.sharding import ReduceOp

ROW_REDUCTIONS = frozenset(REDUCTIONS[k].name for k in (ReduceOp.SUM, ReduceOp.MAX,
                                                         ReduceOp.MIN))
"""The reductions a row kernel computes."""


def fusable(op: Operation) -> bool:
    """Whether the fuse pass may put `op` into a kernel as one of its elementwise ops."""
    definition = opdef.lookup(op.name)
    if len(op.results) != 1 or not definition.pure or definition.fills is not None:
        return False
    return definition.traits.elementwise or op.name == BROADCAST_TO.name


def row_reduction(op: Operation) -> bool:
    """Whether `op` reduces the last dim of its operand alone (a row kernel's root)."""
    return op.name in ROW_REDUCTIONS and op.attrs.get("axes") == (
        op.operands[0].type.rank - 1,)


def row_space(group: Sequence[Operation]) -> tuple[int, ...] | None:
    """The shape a group holding row reductions runs over, one row per program row: the
    broadcast of every value and every row reduction's operand; None when there is none, a
    row reduction reduces less than its last dim, or the root (`group[0]`, groups being
    built from the root up) is neither that shape nor one element of it per row."""
    reductions = [op for op in group if row_reduction(op)]
    shapes = [v.type.shape for op in group for v in op.operands]
    shapes += [op.type.shape for op in group
               if not row_reduction(op) or op.attrs.get("keepdims")]
    try:
        space = tuple(int(n) for n in np.broadcast_shapes(*shapes))
    except ValueError:
        return None
    if not space or any(op.operands[0].type.shape[-1] != space[-1] for op in reductions):
        return None
    root = group[0]
    if row_reduction(root):
        return space if root.operands[0].type.shape == space else None
    return space if root.type.shape in (space, (*space[:-1], 1)) else None


_FLOATS = frozenset({"f16", "bf16", "f32", "f64"})


def contraction(op: Operation) -> tuple[str, str, str] | None:
    """The einsum subscripts (first operand, second, result) of `op` if it is a contraction
    a kernel computes: a ``matmul`` or two-operand ``einsum`` of floats with no letter twice
    in one operand, and every letter only one operand has and the result lacks of size 1."""
    if op.name == MATMUL.name:
        a, b = (v.type for v in op.operands)
        subscripts = matmul_letters(a, b)
    elif op.name == EINSUM.name and len(op.operands) == 2:
        spec = str_attr(op.attrs, "spec")
        (sa, sb), out = parse_einsum(spec, 2)
        subscripts = (sa, sb, out)
    else:
        return None
    if any(v.type.dtype not in _FLOATS for v in op.operands):
        return None
    sa, sb, out = subscripts
    if len(set(sa)) != len(sa) or len(set(sb)) != len(sb):
        return None
    for sub, other, value in ((sa, sb, op.operands[0]), (sb, sa, op.operands[1])):
        if any(n != 1 for c, n in zip(sub, value.type.shape) if c not in other and c not in out):
            return None
    return subscripts


def may_join(op: Operation, group: Sequence[Operation]) -> bool:
    """Whether `op`, every consumer of which is in `group` (root first, as groups are built
    from the root up), may join it: an elementwise op unless it feeds the group's
    contraction; a row reduction that keeps its dims into a group without a contraction
    that stays on one row space; a contraction into a group of elementwise ops on values
    that broadcast to its result's shape."""
    contractions = [g for g in group if contraction(g) is not None]
    if row_reduction(op):
        return bool(op.attrs.get("keepdims")) and not contractions \
            and row_space([*group, op]) is not None
    if contraction(op) is not None:
        if contractions or any(row_reduction(g) for g in group):
            return False
        shapes = [v.type.shape for g in group for v in (*g.results, *g.operands)]
        try:
            return np.broadcast_shapes(op.type.shape, *shapes) == op.type.shape
        except ValueError:
            return False
    result = op.result
    fed = {id(g) for g in contractions}
    return fusable(op) and result is not None and not any(id(u) in fed for u in result.users)
