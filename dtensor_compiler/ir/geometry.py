"""Shard geometry: how a tensor dim is cut into per-device blocks, and where each block lies.

A tensor dim of extent ``n`` sharded over the mesh dims ``(m_1, ..., m_j)`` (major to minor)
is cut into ``k = size(m_1) * ... * size(m_j)`` blocks. The device at mesh coordinates ``c``
holds block ``r = (..((c_1 * size(m_2) + c_2) * size(m_3) + c_3)..)``: the blocks are numbered
row-major over the dim's own mesh dims (`block_number`), one flat numbering over their product.

Every block has room for ``c = ceil(n / k)`` elements (`block_size`, the padded local extent
every device holds). Block ``r`` starts at ``r * c`` (`block_start`) and holds the
``clamp(n - r * c, 0, c)`` elements of ``[r * c, min(n, (r + 1) * c))`` (`valid_size`): full
blocks first, then at most one short block, then empty ones (5 over 4 gives 2, 2, 1, 0). The
rest of a block is *padding*, which always trails: the blocks put end to end are the dim
padded to ``k * c`` (`padded_extent`), so gathering them and cutting to ``n`` gives the dim
back. A dim is *even* when ``k`` divides ``n`` (`splits`); only an uneven dim has padding.

Everything in the compiler and the runtime that turns a global extent into a per-device one
goes through this module: layouts, the IR's types, the relayout planner, factor shardings,
localize, checkpoints and the runtime's stacked arrays.
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
    """Whether a dim of `extent` cut into `shards` blocks is even (has no padding)."""
    return extent % shards == 0


def block_size(extent: int, shards: int) -> int:
    """Room in each block of a dim of `extent` cut into `shards` blocks: ``ceil(extent /
    shards)``, the local extent every device holds."""
    return -(-extent // shards)


def padded_extent(extent: int, shards: int) -> int:
    """The blocks of a dim put end to end: `extent` padded up to a multiple of `shards`."""
    return block_size(extent, shards) * shards


def block_start(extent: int, shards: int, block: Coord) -> Coord:
    """The global index of the first element of block number `block` (an int, or an array
    of block numbers)."""
    return block * block_size(extent, shards)


def valid_size(extent: int, shards: int, block: int) -> int:
    """How many elements of its block, counted from its start, block number `block` holds
    (the rest is padding)."""
    c = block_size(extent, shards)
    return max(0, min(c, extent - block * c))


def local_shape(shape: Shape, dims: TensorDims, mesh: MeshShape) -> Shape:
    """The per-device (padded) shape of a tensor of global `shape` laid out as `dims`."""
    return tuple(block_size(n, shard_count(d, mesh)) for n, d in zip(shape, dims))


def uneven_dims(shape: Shape, dims: TensorDims, mesh: MeshShape) -> tuple[int, ...]:
    """The dims of `shape` that `dims` cuts into blocks with padding."""
    return tuple(i for i, (n, d) in enumerate(zip(shape, dims))
                 if not splits(n, shard_count(d, mesh)))


def aligned(extent: int, fewer: int, more: int) -> bool:
    """Whether a dim of `extent` cut into `fewer` blocks and the same dim cut into `more`
    blocks (``more = fewer * m``, the extra mesh dims minor-most) line up: each of the coarse
    blocks is exactly ``m`` consecutive fine ones, padding included. Then gathering the extra
    mesh dims, or slicing along them, moves no element across a coarse block. Always true for
    a whole dim (``fewer == 1``: the gathered blocks are cut to `extent`) and for even dims;
    5 over 2 and over 2x2 is not (3 + 2 against 2 + 2 | 1 + 0)."""
    return fewer == 1 or block_size(extent, more) * (more // fewer) == block_size(extent, fewer)


def changes_align(shape: Shape, src: TensorDims, dst: TensorDims, mesh: MeshShape) -> bool:
    """Whether every dim whose mesh dims change from `src` to `dst` (one a prefix of the
    other, as a collective changes them) has blocks that line up (`aligned`)."""
    for n, a, b in zip(shape, src, dst):
        if a == b:
            continue
        fewer, more = sorted((shard_count(a, mesh), shard_count(b, mesh)))
        if not aligned(n, fewer, more):
            return False
    return True


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
    out as `dims`: its start along every dim, and its valid extent (padding left out; 0 for
    an empty block)."""
    at = dict(zip(mesh.names, coords))
    starts, sizes = [], []
    for n, d in zip(shape, dims):
        k = shard_count(d, mesh)
        block = block_number(d, at.__getitem__, mesh, 0)
        starts.append(min(n, block_start(n, k, block)))
        sizes.append(valid_size(n, k, block))
    return tuple(starts), tuple(sizes)


def is_empty_block(shape: Shape, valid: Shape) -> bool:
    """Whether a block of valid extent `valid` (from `device_block`) holds nothing of a
    tensor of `shape` that itself holds something: one of the trailing blocks of an uneven
    dim."""
    return 0 in valid and 0 not in shape


def device_coords(device_id: int, mesh: MeshShape) -> tuple[int, ...]:
    """The mesh coordinates of a device: device ids count row-major over the mesh dims."""
    if not 0 <= device_id < mesh.num_devices:
        raise ValueError(f"device {device_id} is not in {mesh.text()}")
    coords = []
    for size in reversed(mesh.sizes):
        coords.append(device_id % size)
        device_id //= size
    return tuple(reversed(coords))
