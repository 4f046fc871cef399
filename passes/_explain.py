"""User-facing words for layout decisions: how ops and values are named in a relayout's `why`.

Op results are named by the op that makes them and the user's line (printed ``%N`` names change
whenever ops are inserted, so they cannot go into text that outlives the pass); function
arguments by their printed names.
"""

from __future__ import annotations

from collections import defaultdict
from functools import cached_property

from dtensor_compiler.ir.core import Function, Operation, Value
from dtensor_compiler.ir.factors import FactorKind
from dtensor_compiler.ir.printer import Namer
from dtensor_compiler.ir.sharding import Sharding
from dtensor_compiler.passes._factor_sharding import FactorSharding, FactorSpace


def mesh_dims_text(mesh_dims: tuple[str, ...]) -> str:
    return mesh_dims[0] if len(mesh_dims) == 1 else "(" + ", ".join(mesh_dims) + ")"


class Explainer:
    """Names ops and values of one function and says why an operand must be relaid out."""

    def __init__(self, func: Function) -> None:
        self._func = func

    @cached_property
    def _namer(self) -> Namer:
        """Printed names; only arguments' are used, so it may be built late (and rarely is)."""
        return Namer(self._func)

    def op(self, op: Operation) -> str:
        return op.name if op.loc is None else f"{op.name} at {op.loc}"

    def value(self, value: Value) -> str:
        if value.owner is None:
            return self._namer(value)
        where = "" if value.owner.loc is None else f" from {value.owner.loc}"
        return f"the {value.owner.name} result{where}"

    def pending(self, who: str, lost: tuple[tuple[str, str], ...]) -> str:
        """``"add cannot take a pending sum over tp"`` for the reductions in `lost`."""
        by_op: dict[str, list[str]] = defaultdict(list)
        for mesh_dim, reduce_op in lost:
            by_op[reduce_op].append(mesh_dim)
        return "; ".join(f"{who} cannot take a pending {reduce_op} over {', '.join(dims)}"
                         for reduce_op, dims in sorted(by_op.items()))

    def barrier_relayout(self, op: Operation, index: int, src: Sharding, dst: Sharding) -> str:
        """Why operand `index` of an op without a factor rule goes from `src` to `dst`."""
        reasons = []
        lost = tuple(p for p in src.partial if p not in dst.partial)
        if lost:
            reasons.append(self.pending(op.name, lost))
        if src.dims != dst.dims:
            reasons.append(f"{op.name} needs this operand as {dst.text()}")
        return (f"{self.op(op)} needs {self.value(op.operands[index])} as {dst.text()}: "
                + "; ".join(reasons))

    def operand_relayout(self, op: Operation, index: int, space: FactorSpace,
                         factors: FactorSharding, src: Sharding, dst: Sharding,
                         matched: list[str]) -> str:
        """Why operand `index` of `op` goes from `src` to `dst` under the strategy `factors`.
        `matched` names the tensors whose layouts the strategy keeps; they are mentioned unless
        the reasons already say where a mesh dim went."""
        reasons = []
        lost = tuple(p for p in src.partial if p not in dst.partial)
        if lost:
            reasons.append(self.pending(op.name, lost))
        moved = located = False
        for i, (have, need) in enumerate(zip(src.dims, dst.dims)):
            if have == need:
                continue
            dim_factors = space.tensors[index][i]
            if not dim_factors or any(space.rule.kind(f) is FactorKind.NEEDS_REPLICATION
                                      for f in dim_factors):
                reasons.append(f"{op.name} needs dim {i} whole")
                continue
            moved = True
            if need:
                role = "contracted dim" if any(space.is_reduced(f) for f in dim_factors) else "dim"
                reasons.append(f"{role} {i} is sharded on {mesh_dims_text(need)}")
            for m in have:
                if m not in need:
                    taken_by = self._taken_by(op, index, space, factors, m)
                    reasons.append(f"dim {i} gives up {m}" + taken_by)
                    located = located or bool(taken_by)
        text = (f"{self.op(op)} needs {self.value(op.operands[index])} as {dst.text()}: "
                + "; ".join(reasons))
        if moved and matched and not located:
            text += f" (to match {' and '.join(matched)})"
        return text

    def _taken_by(self, op: Operation, index: int, space: FactorSpace, factors: FactorSharding,
                  mesh_dim: str) -> str:
        """`` to <tensor>'s dim <j>``: where the strategy uses `mesh_dim` instead, if anywhere."""
        owner = next((f for f, mesh_dims in enumerate(factors) if mesh_dim in mesh_dims), None)
        if owner is None:
            return ""
        order = [index] + [t for t in range(len(space.tensors)) if t != index]
        for t in order:
            for j, dim_factors in enumerate(space.tensors[t]):
                if owner in dim_factors:
                    if t == index:
                        return f" to dim {j}"
                    if t == space.result_index:
                        return f" to dim {j} of the result"
                    return f" to dim {j} of {self.value(op.operands[t])}"
        return ""
