"""Factor shardings: an op's strategy stated as the mesh dims of each factor of its rule.

A `FactorRule` (see `ir/factors.py`) names an op's factors and, for every dim of every operand
and of the result, the factors it is made of, major to minor. A *factor sharding* gives every
factor a tuple of mesh dims (major to minor; empty means unsharded). It fixes the layout of
every tensor of the op at once:

- *Projection* reads a tensor's layout as a factor sharding. The mesh dims of a tensor dim go
  to its factors major to minor: to the current factor while what is left of its size is
  divisible by the mesh dim's size, to the next one once the current factor is used up.
  A factor that is a whole tensor dim in every tensor of the op (*standalone*: an
  elementwise dim, a contracted or reduced dim, a batch dim) takes all the mesh dims of its
  tensor dim even where they do not divide it: every tensor then cuts it into the same
  uneven blocks (see `ir.geometry`). A factor that is part of a merged or split dim may only
  be cut evenly, since ``ceil`` blocks of the factor are not blocks of the dim.
  A mesh dim that does not fit (or lands on a must-replicate factor, or on a dim without
  factors) is dropped together with every mesh dim after it in that tensor dim.
- *Un-projection* gives each tensor dim the mesh dims of its factors in order. A minor factor
  may only be sharded when every factor before it in the dim is sharded all the way down
  (one element per shard); otherwise the tensor dim would not be split into contiguous blocks.

`FactorSpace.normalize` removes assignments that break these rules for any tensor of the op,
so every factor sharding it returns un-projects losslessly onto every operand and the result.
"""

from __future__ import annotations

from collections.abc import Hashable
from math import prod

import numpy as np

from dtensor_compiler.ir import geometry, opdef
from dtensor_compiler.ir.core import Operation
from dtensor_compiler.ir.factors import DimFactors, FactorKind, FactorRule
from dtensor_compiler.ir.sharding import MeshShape, ReduceOp

MeshDims = tuple[str, ...]
TensorDims = tuple[MeshDims, ...]
"""The dims part of a `Sharding`: per tensor dim, its mesh dims."""
FactorSharding = tuple[MeshDims, ...]
"""Per factor of a rule, the mesh dims it is split over."""


class FactorSpace:
    """The factor shardings of one op rule on one mesh.

    Tensors are numbered like the rule's: operands first, then the result (index
    `result_index`). Projections and un-projections are memoized; one instance serves every op
    with this rule.
    """

    def __init__(self, rule: FactorRule, mesh: MeshShape) -> None:
        self.rule = rule
        self.mesh_sizes = dict(mesh.dims)
        self.tensors: tuple[tuple[DimFactors, ...], ...] = rule.operands + (rule.result,)
        self.result_index = len(rule.operands)
        self.standalone = frozenset(
            f for f in range(len(rule.sizes))
            if all(dim == (f,) for tensor in self.tensors for dim in tensor if f in dim))
        """Factors that are a whole tensor dim wherever they appear, which may be cut
        unevenly."""
        self._projections: dict[tuple[int, TensorDims], FactorSharding] = {}
        self._unprojections: dict[tuple[FactorSharding, int], TensorDims] = {}

    @property
    def empty(self) -> FactorSharding:
        return ((),) * len(self.rule.sizes)

    def _shards(self, mesh_dims: MeshDims) -> int:
        return prod(self.mesh_sizes[m] for m in mesh_dims)

    def _exhausted(self, fs: FactorSharding, factor: int) -> bool:
        return self._shards(fs[factor]) == self.rule.sizes[factor]

    # -- tensor layout <-> factor sharding -------------------------------------------------------
    def project(self, tensor: int, dims: TensorDims) -> FactorSharding:
        """The factor sharding a tensor laid out as `dims` implies (see the module docstring)."""
        key = (tensor, dims)
        if key not in self._projections:
            self._projections[key] = self.normalize(self._project(self.tensors[tensor], dims))
        return self._projections[key]

    def _project(self, tensor: tuple[DimFactors, ...], dims: TensorDims) -> FactorSharding:
        out: list[MeshDims] = list(self.empty)
        for factors, mesh_dims in zip(tensor, dims):
            if (len(factors) == 1 and factors[0] in self.standalone and mesh_dims
                    and self.rule.kind(factors[0]) is not FactorKind.NEEDS_REPLICATION):
                out[factors[0]] = mesh_dims
                continue
            pos = 0
            left = self.rule.sizes[factors[0]] if factors else 1
            for m in mesh_dims:
                while left == 1 and pos + 1 < len(factors):
                    pos += 1
                    left = self.rule.sizes[factors[pos]]
                n = self.mesh_sizes[m]
                if (not factors or not geometry.splits(left, n)
                        or self.rule.kind(factors[pos]) is FactorKind.NEEDS_REPLICATION):
                    break
                out[factors[pos]] += (m,)
                left = geometry.block_size(left, n)
        return tuple(out)

    def unproject(self, fs: FactorSharding, tensor: int) -> TensorDims:
        """The layout dims of one tensor of the op under the normalized factor sharding `fs`."""
        key = (fs, tensor)
        if key not in self._unprojections:
            self._unprojections[key] = self._unproject(fs, tensor)
        return self._unprojections[key]

    def _unproject(self, fs: FactorSharding, tensor: int) -> TensorDims:
        dims: list[MeshDims] = []
        for factors in self.tensors[tensor]:
            mesh_dims: MeshDims = ()
            for f in factors:
                mesh_dims += fs[f]
                if not self._exhausted(fs, f):
                    break
            dims.append(mesh_dims)
        return tuple(dims)

    # -- building candidates ----------------------------------------------------------------------
    def normalize(self, fs: FactorSharding) -> FactorSharding:
        """`fs` without the assignments some tensor of the op cannot represent: mesh dims on
        must-replicate factors, a mesh dim used twice, shard counts that do not divide a
        factor, and minor factors sharded under a major factor that is not used up."""
        out: list[MeshDims] = []
        seen: set[str] = set()
        for f, mesh_dims in enumerate(fs):
            kept: MeshDims = ()
            if self.rule.kind(f) is not FactorKind.NEEDS_REPLICATION:
                for m in mesh_dims:
                    if m in seen or (f not in self.standalone and not geometry.splits(
                            self.rule.sizes[f], self._shards(kept + (m,)))):
                        break
                    kept += (m,)
            seen.update(kept)
            out.append(kept)
        changed = True
        while changed:
            changed = False
            for tensor in self.tensors:
                for factors in tensor:
                    for major, minor in zip(factors, factors[1:]):
                        if out[minor] and not self._exhausted(tuple(out), major):
                            out[minor] = ()
                            changed = True
        return tuple(out)

    def merge(self, base: FactorSharding, other: FactorSharding) -> FactorSharding:
        """`base` plus the factors of `other` that `base` leaves unsharded, where their mesh
        dims are still free."""
        used = {m for mesh_dims in base for m in mesh_dims}
        out = list(base)
        for f, mesh_dims in enumerate(other):
            if mesh_dims and not out[f] and used.isdisjoint(mesh_dims):
                out[f] = mesh_dims
                used.update(mesh_dims)
        return self.normalize(tuple(out))

    def reduced(self, fs: FactorSharding) -> dict[str, ReduceOp]:
        """The pending reductions the result gets: ``{mesh dim: op}`` for every mesh dim of a
        factor that is reduced away (a contracted dim, a reduced axis)."""
        out: dict[str, ReduceOp] = {}
        for f, mesh_dims in enumerate(fs):
            if mesh_dims and self.is_reduced(f):
                op = self.rule.reduce_op(f)
                out.update((m, op) for m in mesh_dims)
        return out

    def is_reduced(self, factor: int) -> bool:
        return self.rule.kind(factor) is FactorKind.REDUCED


class FactorSpaces:
    """The `FactorSpace` of every op, built once per distinct (op name, attributes, operand and
    result types), so the identical layers of a deep model share one space, its memoized
    projections, and the strategies chosen for it."""

    def __init__(self, mesh: MeshShape) -> None:
        self.mesh = mesh
        self._by_signature: dict[Hashable, FactorSpace | None] = {}
        self._by_op: dict[Operation, FactorSpace | None] = {}
        """Keyed by the op itself (not its id, which an op made after it is freed reuses)."""

    def of(self, op: Operation) -> FactorSpace | None:
        """The op's factor space, or None for a barrier (``relayout``, the collectives)."""
        if op not in self._by_op:
            self._by_op[op] = self._build(op)
        return self._by_op[op]

    def _build(self, op: Operation) -> FactorSpace | None:
        definition = opdef.lookup(op.name)
        if not isinstance(definition.sharding, opdef.Factors):
            return None
        assert op.result is not None, "ops with a factor rule have one result"
        signature: Hashable = None
        if not any(isinstance(v, np.ndarray) for v in op.attrs.values()):
            signature = (op.name, tuple(sorted(op.attrs.items())),
                         tuple((v.type.dtype, v.type.shape) for v in op.operands),
                         (op.result.type.dtype, op.result.type.shape))
            if signature in self._by_signature:
                return self._by_signature[signature]
        rule = definition.sharding.rule(op.attrs, [v.type for v in op.operands], op.result.type)
        space = FactorSpace(rule, self.mesh)
        if signature is not None:
            self._by_signature[signature] = space
        return space
