"""The devices one client holds: a box of the mesh, and stacked arrays over it.

Clients own contiguous row-major ranges of device ids (``create_distributed_mesh``), so each
client's devices form a box of mesh coordinates: a range along every mesh dim. A client
holds a value in the stacked form of `stacked`, cut to its box: one leading axis per mesh
dim, of the box's extent where the value differs along that dim (sharded or pending a
reduction over it) and 1 where it is the same. On a one-client mesh the box is the whole
mesh and this is the simulated mesh's form exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from math import prod

import numpy as np

from dtensor_compiler.ir import geometry
from dtensor_compiler.ir.sharding import MeshShape, Sharding
from dtensor_compiler.runtime.stacked import reduction_identity


@dataclass(frozen=True)
class Box:
    """A range of coordinates along every dim of `mesh`: ``start[j] .. start[j] + extent[j]``."""

    mesh: MeshShape
    start: tuple[int, ...]
    extent: tuple[int, ...]

    @staticmethod
    def of_mesh(mesh: MeshShape) -> Box:
        """Every device of `mesh` (what one process holds on the simulated mesh)."""
        return Box(mesh, (0,) * len(mesh.dims), mesh.sizes)

    @staticmethod
    def of_devices(mesh: MeshShape, first: int, count: int) -> Box:
        """The box of device ids ``first .. first + count - 1``; ValueError when those are
        not a box (a count that does not split the mesh into whole rows of its minor dims)."""
        sizes = mesh.sizes
        if count <= 0 or first % count or first + count > mesh.num_devices:
            raise ValueError(f"devices {first}..{first + count - 1} are not a block of "
                             f"{mesh.text()}")
        extent = []
        left = count
        for size in reversed(sizes):
            take = min(size, left)
            if (take == size and left % size) or (take < size and size % take):
                raise ValueError(f"{count} consecutive devices are not a box of "
                                 f"{mesh.text()}: each client's devices must be whole rows "
                                 "of the minor mesh dims, or a part of one that divides it")
            extent.append(take)
            left //= take
        extent.reverse()
        start = tuple(int(c) for c in np.unravel_index(first, sizes)) if sizes else ()
        return Box(mesh, start, tuple(extent))

    @property
    def submesh(self) -> MeshShape:
        """A mesh of the box's extents (same dim names), for stacked arrays over the box."""
        return MeshShape(tuple((m, e) for m, e in zip(self.mesh.names, self.extent)))

    @property
    def devices(self) -> list[int]:
        """The box's device ids, ascending."""
        ids = np.arange(self.mesh.num_devices).reshape(self.mesh.sizes)
        return sorted(ids[tuple(slice(s, s + e) for s, e in zip(self.start, self.extent))]
                      .ravel().tolist())

    def whole(self, mesh_dims: Sequence[str]) -> bool:
        """Whether the box spans the whole mesh along each of `mesh_dims`."""
        return all(self.extent[self.mesh.index(m)] == self.mesh.size(m) for m in mesh_dims)

    def coords(self, mesh_dim: str) -> np.ndarray:
        """The box's coordinates along `mesh_dim`, on that mesh axis (extent 1 elsewhere)."""
        j = self.mesh.index(mesh_dim)
        k = len(self.mesh.dims)
        along = np.arange(self.start[j], self.start[j] + self.extent[j])
        return along.reshape((1,) * j + (-1,) + (1,) * (k - j - 1))

    def block_index(self, mesh_dims: Sequence[str]) -> np.ndarray:
        """Each box device's block number along a dim sharded over `mesh_dims`."""
        k = len(self.mesh.dims)
        return geometry.block_number(mesh_dims, self.coords, self.mesh,
                                     np.zeros((1,) * k, dtype=np.int64))

    def cut(self, stacked: np.ndarray) -> np.ndarray:
        """The box's part of an array stacked over the whole mesh (axes of extent 1 kept)."""
        index = tuple(slice(s, s + e) if n > 1 else slice(None)
                      for s, e, n in zip(self.start, self.extent, stacked.shape))
        return stacked[index]

    def coords_of(self, device: int) -> tuple[int, ...] | None:
        """The coordinates of device `device` within the box (from its start), or None when
        the box does not hold it."""
        coords = np.unravel_index(device, self.mesh.sizes) if self.mesh.dims else ()
        local = tuple(int(c) - s for c, s in zip(coords, self.start))
        if all(0 <= c < e for c, e in zip(local, self.extent)):
            return local
        return None

    def index_of(self, coords: dict[str, int]) -> tuple[int | slice, ...] | None:
        """Where along the leading axes the devices at mesh `coords` (some dims) are, or None
        when the box holds none of them."""
        out: list[int | slice] = []
        for m, s, e in zip(self.mesh.names, self.start, self.extent):
            if m not in coords:
                out.append(slice(None))
            elif s <= coords[m] < s + e:
                out.append(coords[m] - s)
            else:
                return None
        return tuple(out)

    def place_partial(self, x: np.ndarray, sharding: Sharding) -> np.ndarray:
        """A value held whole spread into `sharding`'s pending reductions over the box: the
        value where every partial mesh coordinate is 0, and where the first nonzero one (in
        mesh order) is along ``m``, the identity of ``m``'s reduction (as `stacked` does
        over the whole mesh)."""
        partial = sharding.partial_map
        if not partial:
            return x
        mesh = self.mesh
        order = sorted(partial, key=mesh.index)
        shape = list(x.shape)
        for m in order:
            shape[mesh.index(m)] = self.extent[mesh.index(m)]
        out = np.empty(shape, dtype=x.dtype)
        for m in reversed(order):
            j = mesh.index(m)
            first = max(1 - self.start[j], 0)
            out[(slice(None),) * j + (slice(first, None),)] = reduction_identity(
                partial[m], x.dtype)
        if all(self.start[mesh.index(m)] == 0 for m in order):
            out[tuple(slice(0, 1) if m in partial else slice(None) for m in mesh.names)] = x
        return out

    def size(self) -> int:
        return prod(self.extent)
