"""Mesh-free layout facts as they appear in the IR.

`MeshShape` is the part of a mesh the compiler needs: ordered (name, size) pairs. `Sharding` is
the internal layout of one tensor: for every tensor dim an ordered tuple of mesh dims (major to
minor; empty means unsharded) plus the pending partial reductions `{mesh_dim: op}`. A tensor is
replicated over every mesh dim that is neither in `dims` nor in `partial`.

Printed form: ``{dp, -}``, ``{(dp, tp), -}``, ``{-, -} partial(tp:sum)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from math import prod

REDUCE_OPS = ("sum", "max", "min", "prod")


@dataclass(frozen=True)
class MeshShape:
    """Ordered mesh dims with their sizes, e.g. ``(("dp", 2), ("tp", 4))``."""

    dims: tuple[tuple[str, int], ...]

    # Planning asks for mesh dim sizes hundreds of thousands of times, so the lookups are
    # computed once (cached_property writes the instance dict, which a frozen dataclass allows).
    @cached_property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.dims)

    @cached_property
    def _size_of(self) -> dict[str, int]:
        return dict(self.dims)

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(size for _, size in self.dims)

    @property
    def num_devices(self) -> int:
        return prod(self.sizes)

    def size(self, name: str) -> int:
        size = self._size_of.get(name)
        if size is None:
            raise KeyError(f"mesh has no dim {name!r}; dims are {list(self.names)}")
        return size

    def index(self, name: str) -> int:
        return self.names.index(name)

    def group_size(self, names: tuple[str, ...] | list[str]) -> int:
        """Number of devices in one group of a collective over `names`."""
        if not names:
            return 1
        return prod(self.size(n) for n in names)

    def text(self) -> str:
        return "mesh<" + ", ".join(f"{n}={s}" for n, s in self.dims) + ">"

    def __str__(self) -> str:
        return self.text()


@dataclass(frozen=True)
class Sharding:
    """Per tensor dim, the mesh dims it is split over; plus pending partial reductions.

    `partial` is kept sorted by mesh dim name so equal shardings compare equal.
    """

    dims: tuple[tuple[str, ...], ...]
    partial: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "partial", tuple(sorted(self.partial)))

    # -- construction -------------------------------------------------------------------------
    @staticmethod
    def replicated(rank: int) -> Sharding:
        return Sharding(((),) * rank)

    @staticmethod
    def of(*dims: str | tuple[str, ...] | None, partial: dict[str, str] | None = None) -> Sharding:
        """Convenience: ``Sharding.of("dp", None)`` is ``{dp, -}``."""
        norm = tuple(() if d is None else (d,) if isinstance(d, str) else tuple(d) for d in dims)
        return Sharding(norm, tuple((partial or {}).items()))

    # -- queries ------------------------------------------------------------------------------
    @property
    def rank(self) -> int:
        return len(self.dims)

    @property
    def partial_dims(self) -> tuple[str, ...]:
        return tuple(m for m, _ in self.partial)

    @property
    def partial_map(self) -> dict[str, str]:
        return dict(self.partial)

    @property
    def is_partial(self) -> bool:
        return bool(self.partial)

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
        return mesh.group_size(self.dims[dim])

    def local_shape(self, shape: tuple[int, ...], mesh: MeshShape) -> tuple[int, ...]:
        """Per-device shape. Callers check divisibility first (`divides`)."""
        return tuple(s // self.num_shards(i, mesh) for i, s in enumerate(shape))

    def global_shape(self, local: tuple[int, ...], mesh: MeshShape) -> tuple[int, ...]:
        return tuple(s * self.num_shards(i, mesh) for i, s in enumerate(local))

    def divides(self, shape: tuple[int, ...], mesh: MeshShape) -> bool:
        return all(s % self.num_shards(i, mesh) == 0 for i, s in enumerate(shape))

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
        for m, op in self.partial:
            if op not in REDUCE_OPS:
                out.append(f"unknown partial reduction {op!r} on {m!r}")
        if shape is not None and not out:
            for i, s in enumerate(shape):
                n = self.num_shards(i, mesh)
                if s % n:
                    out.append(f"dim {i} of size {s} is not divisible by its {n} shards")
        return out

    # -- derivation ---------------------------------------------------------------------------
    def with_dims(self, dims: tuple[tuple[str, ...], ...]) -> Sharding:
        return Sharding(dims, self.partial)

    def with_partial(self, partial: dict[str, str] | tuple[tuple[str, str], ...]) -> Sharding:
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
