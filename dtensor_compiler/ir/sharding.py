"""Mesh-free layout facts as they appear in the IR.

`MeshShape` is the part of a mesh the compiler needs: ordered (name, size) pairs. `Sharding` is
the internal layout of one tensor: for every tensor dim an ordered tuple of mesh dims (major to
minor; empty means unsharded) plus the pending partial reductions `{mesh_dim: op}`. A tensor is
replicated over every mesh dim that is neither in `dims` nor in `partial`.

**Order of pending reductions.** A value with several pending reductions is what applying them
one mesh dim at a time gives, in the mesh's dim order (major first): with ``partial(dp:max,
tp:sum)`` on ``mesh<dp=4, tp=2>`` the value is the sum over tp of the max over dp. Reductions of
the same kind commute, so several of them may be applied together or in any order; one of
another kind may not overtake them (`may_reduce`). A pending reduction may be added where every
pending one before it in mesh order is of its kind (`may_add_partial`): the added dim holds the
value at coordinate 0 and the reduction's identity elsewhere, which the earlier reductions,
being of its kind, keep.

Printed form: ``{dp, -}``, ``{(dp, tp), -}``, ``{-, -} partial(tp:sum)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from dtensor_compiler.ir import geometry
from dtensor_compiler.ir.mesh_shape import MeshShape


class ReduceOp(StrEnum):
    """A reduction that combines the pieces of a value held across devices. A `StrEnum`, so
    it prints as its name (``sum``) and compares equal to it."""

    SUM = "sum"
    MAX = "max"
    MIN = "min"
    PROD = "prod"

    @classmethod
    def parse(cls, name: object) -> ReduceOp:
        """`name` as a ReduceOp; ValueError naming the known ones otherwise."""
        if isinstance(name, str):
            try:
                return cls(name)
            except ValueError:
                pass
        known = ", ".join(op.value for op in cls)
        raise ValueError(f"unknown reduction {name!r}; reductions are {known}") from None


@dataclass(frozen=True)
class Sharding:
    """Per tensor dim, the mesh dims it is split over; plus pending partial reductions.

    `partial` is kept sorted by mesh dim name so equal shardings compare equal; reductions
    given as names (``"sum"``) become `ReduceOp`s (ValueError for an unknown one).
    """

    dims: tuple[tuple[str, ...], ...]
    partial: tuple[tuple[str, ReduceOp], ...] = ()

    def __post_init__(self) -> None:
        partial = self.partial
        if partial:
            if not all(type(op) is ReduceOp for _, op in partial):
                partial = tuple((m, ReduceOp.parse(op)) for m, op in partial)
            partial = tuple(sorted(partial))
            object.__setattr__(self, "partial", partial)
        object.__setattr__(self, "_hash", hash((self.dims, partial)))

    def __hash__(self) -> int:
        """Computed once: planning keys its memos by layouts, millions of lookups."""
        return self._hash  # type: ignore[attr-defined]

    def __reduce__(self) -> tuple[type[Sharding], tuple[object, ...]]:
        return Sharding, (self.dims, self.partial)  # (the hash is rebuilt, not unpickled)

    # -- construction -------------------------------------------------------------------------
    @staticmethod
    def replicated(rank: int) -> Sharding:
        return Sharding(((),) * rank)

    @staticmethod
    def of(*dims: str | tuple[str, ...] | None, partial: dict[str, str] | None = None
           ) -> Sharding:
        """Convenience: ``Sharding.of("dp", None)`` is ``{dp, -}``."""
        norm = tuple(() if d is None else (d,) if isinstance(d, str) else tuple(d) for d in dims)
        return Sharding(norm, tuple((m, ReduceOp.parse(op)) for m, op in (partial or {}).items()))

    # -- queries ------------------------------------------------------------------------------
    @property
    def rank(self) -> int:
        return len(self.dims)

    @property
    def partial_dims(self) -> tuple[str, ...]:
        return tuple(m for m, _ in self.partial)

    @property
    def partial_map(self) -> dict[str, ReduceOp]:
        return dict(self.partial)

    @property
    def is_partial(self) -> bool:
        return bool(self.partial)

    def may_reduce(self, mesh_dims: Sequence[str], op: ReduceOp, mesh_names: Sequence[str]
                   ) -> bool:
        """Whether the pending `op` reductions over `mesh_dims` may be applied now: every
        other pending reduction before one of them in mesh order is of the same kind."""
        last = max(mesh_names.index(m) for m in mesh_dims)
        return all(o == op for m, o in self.partial
                   if m not in mesh_dims and mesh_names.index(m) < last)

    def may_add_partial(self, mesh_dim: str, op: ReduceOp, mesh_names: Sequence[str]) -> bool:
        """Whether a pending `op` reduction over `mesh_dim` may be added to this layout: every
        pending reduction before it in mesh order is of the same kind."""
        at = mesh_names.index(mesh_dim)
        return all(o == op for m, o in self.partial if mesh_names.index(m) < at)

    def sharded_mesh_dims(self) -> tuple[str, ...]:
        """Mesh dims that split some tensor dim, in tensor-dim order."""
        return tuple(m for d in self.dims for m in d)

    def used_mesh_dims(self) -> set[str]:
        return set(self.sharded_mesh_dims()) | set(self.partial_dims)

    def is_replicated(self) -> bool:
        return not self.partial and all(not d for d in self.dims)

    def dim_of(self, mesh_dim: str) -> int | None:
        """The tensor dim sharded over `mesh_dim`, or None."""
        for i, d in enumerate(self.dims):
            if mesh_dim in d:
                return i
        return None

    def num_shards(self, dim: int, mesh: MeshShape) -> int:
        return geometry.shard_count(self.dims[dim], mesh)

    def local_shape(self, shape: tuple[int, ...], mesh: MeshShape) -> tuple[int, ...]:
        """Per-device (padded) shape of a tensor of global `shape` (see `geometry`)."""
        return geometry.local_shape(shape, self.dims, mesh)

    def problems(self, mesh: MeshShape, shape: tuple[int, ...] | None = None) -> list[str]:
        """Everything wrong with this sharding on `mesh` (and `shape`), as messages."""
        out: list[str] = []
        if shape is not None and len(shape) != self.rank:
            out.append(f"layout has rank {self.rank} but the tensor has rank {len(shape)}")
        seen: list[str] = []
        for m in self.sharded_mesh_dims() + self.partial_dims:
            if m not in mesh.names:
                out.append(f"mesh dim {m!r} is not in {mesh.text()}")
            elif m in seen:
                out.append(f"mesh dim {m!r} is used more than once")
            seen.append(m)
        return out

    # -- derivation ---------------------------------------------------------------------------
    def with_dims(self, dims: tuple[tuple[str, ...], ...]) -> Sharding:
        return Sharding(dims, self.partial)

    def with_partial(self, partial: dict[str, ReduceOp] | tuple[tuple[str, ReduceOp], ...]
                     ) -> Sharding:
        items = tuple(partial.items()) if isinstance(partial, dict) else tuple(partial)
        return Sharding(self.dims, items)

    def without_partial(self) -> Sharding:
        return Sharding(self.dims)

    # -- text ---------------------------------------------------------------------------------
    def text(self) -> str:
        def one(d: tuple[str, ...]) -> str:
            if not d:
                return "-"
            return d[0] if len(d) == 1 else "(" + ", ".join(d) + ")"

        out = "{" + ", ".join(one(d) for d in self.dims) + "}"
        if self.partial:
            out += " partial(" + ", ".join(f"{m}:{op}" for m, op in self.partial) + ")"
        return out

    def __str__(self) -> str:
        return self.text()
