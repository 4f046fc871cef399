"""Shard geometry: how a tensor dim is cut into per-device blocks, and where each block lies.

A tensor dim of extent ``n`` sharded over the mesh dims ``(m_1, ..., m_j)`` (major to minor)
is cut into ``k = size(m_1) * ... * size(m_j)`` blocks. The device at mesh coordinates ``c``
holds block ``r = (..((c_1 * size(m_2) + c_2) * size(m_3) + c_3)..)``: the blocks are numbered
row-major over the dim's own mesh dims (`block_number`). Block ``r`` starts at
``r * block_size(n, k)`` (`block_start`).

Today every block holds ``n / k`` elements, so a dim can be sharded only when ``k`` divides
``n`` (`splits`). Everything in the compiler and the runtime that turns a global extent into a
per-device one, or back, goes through this module: layouts, the IR's types, the relayout
planner, factor shardings, localize and the runtime's stacked arrays. Uneven (ceil-sized)
blocks are a change here, not in each of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, Self, TypeVar

from dtensor_compiler.ir.mesh_shape import MeshShape

Shape = tuple[int, ...]
MeshDims = tuple[str, ...]
TensorDims = Sequence[Sequence[str]]
"""Per tensor dim, the mesh dims it is split over (the dims part of a `Sharding`)."""


class _CoordLike(Protocol):
    """What block arithmetic needs of a coordinate: scaling by an int, adding another."""

    def __mul__(self, other: int, /) -> Self: ...

    def __add__(self, other: Self, /) -> Self: ...


Coord = TypeVar("Coord", bound=_CoordLike)
"""A mesh coordinate: an int on one device, or an integer array over the simulated mesh."""


def shard_count(mesh_dims: Sequence[str], mesh: MeshShape) -> int:
    """How many blocks a dim sharded over `mesh_dims` is cut into."""
    return mesh.group_size(tuple(mesh_dims))


def splits(extent: int, shards: int) -> bool:
    """Whether a dim of `extent` can be cut into `shards` blocks."""
    return extent % shards == 0


def block_size(extent: int, shards: int) -> int:
    """Elements in each block of a dim of `extent` cut into `shards` blocks (the local
    extent every device holds)."""
    return extent // shards


def block_start(extent: int, shards: int, block: Coord) -> Coord:
    """The global index of the first element of block number `block` (an int, or an array
    of block numbers)."""
    return block * block_size(extent, shards)


def global_extent(local: int, shards: int) -> int:
    """The global extent of a dim whose blocks have `local` elements each."""
    return local * shards


def local_shape(shape: Shape, dims: TensorDims, mesh: MeshShape) -> Shape:
    """The per-device shape of a tensor of global `shape` laid out as `dims`. Callers check
    `fits` first."""
    return tuple(block_size(n, shard_count(d, mesh)) for n, d in zip(shape, dims))


def global_shape(local: Shape, dims: TensorDims, mesh: MeshShape) -> Shape:
    """The global shape of a tensor whose per-device shape is `local`."""
    return tuple(global_extent(n, shard_count(d, mesh)) for n, d in zip(local, dims))


def fits(shape: Shape, dims: TensorDims, mesh: MeshShape) -> bool:
    """Whether every dim of `shape` can be cut as `dims` says."""
    return all(splits(n, shard_count(d, mesh)) for n, d in zip(shape, dims))


def misfits(shape: Shape, dims: TensorDims, mesh: MeshShape) -> list[str]:
    """One message per dim of `shape` that cannot be cut as `dims` says."""
    out = []
    for i, (n, d) in enumerate(zip(shape, dims)):
        k = shard_count(d, mesh)
        if not splits(n, k):
            out.append(f"dim {i} of size {n} is not divisible by its {k} shards")
    return out


def block_number(mesh_dims: Sequence[str], coord: Callable[[str], Coord], mesh: MeshShape,
                 zero: Coord) -> Coord:
    """The block a device holds along a dim sharded over `mesh_dims`, from its coordinate
    along each mesh dim (`coord(name)`). `zero` is the block number of an unsharded dim:
    ``0``, or a zero array when coordinates are arrays."""
    index = zero
    for m in mesh_dims:
        index = index * mesh.size(m) + coord(m)
    return index


def device_block(shape: Shape, dims: TensorDims, mesh: MeshShape,
                 coords: Sequence[int]) -> tuple[Shape, Shape]:
    """Where the block of the device at mesh `coords` lies in a tensor of global `shape` laid
    out as `dims`: its start along every dim, and its extent."""
    at = dict(zip(mesh.names, coords))
    starts, sizes = [], []
    for n, d in zip(shape, dims):
        k = shard_count(d, mesh)
        starts.append(block_start(n, k, block_number(d, at.__getitem__, mesh, 0)))
        sizes.append(block_size(n, k))
    return tuple(starts), tuple(sizes)


def device_coords(device_id: int, mesh: MeshShape) -> tuple[int, ...]:
    """The mesh coordinates of a device: device ids count row-major over the mesh dims."""
    if not 0 <= device_id < mesh.num_devices:
        raise ValueError(f"device {device_id} is not in {mesh.text()}")
    coords = []
    for size in reversed(mesh.sizes):
        coords.append(device_id % size)
        device_id //= size
    return tuple(reversed(coords))
