"""The simulated mesh's communicator: collectives on stacked arrays (see `stacked`).

Each method takes the operand's stacked array, its `Sharding` and the collective op's
attributes, and returns the stacked array of the result, whose sharding is exactly what the
collective's definition (`CollectiveDef.transfer`) makes of the operand's: gathered mesh dims
are the minor-most suffix of a tensor dim's tuple, and scattered or sliced mesh dims are
appended minor-most. Data moves by reshapes, axis moves and reductions over mesh axes, never by
a loop over devices, on meshes of any rank and over groups of several mesh dims.

The methods that change the block shape also take `block`, the result's block shape (from its
type). Where blocks have padding (`ir.geometry`), scattering pads the dim at its end to whole
blocks first, and gathering cuts the blocks put together to `block`: for a dim gathered whole,
its exact extent, so the padding is gone. The planner only emits changes whose blocks line up
(`geometry.aligned`), so nothing else is needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import prod

import numpy as np

from dtensor_compiler.ir import opdef
from dtensor_compiler.ir.sharding import MeshShape, ReduceOp, Sharding
from dtensor_compiler.runtime.stacked import (
    check_stacked,
    pad_to_blocks,
    place_partial,
    reduce_mesh_axes,
    trim_to,
)

Shape = tuple[int, ...]


def scatter_into_mesh(x: np.ndarray, mesh_dims: Sequence[str], axis: int, mesh: MeshShape,
                       block: int) -> np.ndarray:
    """Split local `axis` into blocks of `block` elements over `mesh_dims` (major to minor),
    padding it at its end to whole blocks, and move each block index onto its mesh axis,
    which must have extent 1. A view when nothing is padded."""
    k = len(mesh.dims)
    targets = [mesh.index(m) for m in mesh_dims]
    counts = tuple(mesh.size(m) for m in mesh_dims)
    if x.shape[k + axis] > block * prod(counts):
        raise ValueError(f"dim {axis} of local size {x.shape[k + axis]} does not fit in "
                         f"{prod(counts)} blocks of {block}")
    x = pad_to_blocks(x, [block * prod(counts)], k + axis)
    local = x.shape[k:]
    kept = [j for j in range(k) if j not in targets]
    squeezed = x.reshape([x.shape[j] for j in kept] + list(local))
    at = len(kept) + axis
    split = squeezed.reshape(squeezed.shape[:at] + counts + (block,) + squeezed.shape[at + 1:])
    block_of = {t: at + i for i, t in enumerate(targets)}
    kept_at = {j: i for i, j in enumerate(kept)}
    mesh_order = [block_of[j] if j in block_of else kept_at[j] for j in range(k)]
    local_order = [len(kept) + i for i in range(axis)] + [at + len(counts)] + [
        at + len(counts) + 1 + i for i in range(len(local) - axis - 1)]
    return split.transpose(mesh_order + local_order)


def gather_from_mesh(x: np.ndarray, mesh_dims: Sequence[str], axis: int, mesh: MeshShape,
                      extent: int) -> np.ndarray:
    """Inverse of `scatter_into_mesh`: concatenate the blocks held along the mesh axes of
    `mesh_dims` (major to minor) into local `axis`, cut to `extent`, leaving those mesh axes
    with extent 1."""
    k = len(mesh.dims)
    sources = [mesh.index(m) for m in mesh_dims]
    kept = [j for j in range(k) if j not in sources]
    local_axes = [k + i for i in range(x.ndim - k)]
    order = kept + local_axes[:axis] + sources + local_axes[axis:]
    moved = x.transpose(order)
    out_shape = list(x.shape)
    for j in sources:
        out_shape[j] = 1
    out_shape[k + axis] *= prod(x.shape[j] for j in sources)
    return trim_to(moved.reshape(out_shape), [extent], k + axis)


class StackedCommunicator:
    """Collectives of the simulated mesh (implements `executor.Communicator`)."""

    def __init__(self, mesh: MeshShape) -> None:
        self.mesh = mesh

    def _check(self, kind: str, x: np.ndarray, src: Sharding, **attrs: object) -> None:
        """Raise ValueError unless `x` is laid out as `src` and the collective applies."""
        check_stacked(x, src, self.mesh)
        collective = opdef.lookup(kind).collective
        assert collective is not None
        collective.transfer(attrs, src, self.mesh)  # type: ignore[arg-type]

    def all_reduce(self, x: np.ndarray, src: Sharding, mesh_dims: tuple[str, ...],
                   op: ReduceOp) -> np.ndarray:
        self._check("all_reduce", x, src, mesh_dims=mesh_dims, op=op)
        return reduce_mesh_axes(x, mesh_dims, op, self.mesh)

    def reduce_scatter(self, x: np.ndarray, src: Sharding, mesh_dims: tuple[str, ...],
                       op: ReduceOp, axis: int, block: Shape) -> np.ndarray:
        self._check("reduce_scatter", x, src, mesh_dims=mesh_dims, op=op, axis=axis)
        reduced = reduce_mesh_axes(x, mesh_dims, op, self.mesh)
        return scatter_into_mesh(reduced, mesh_dims, axis, self.mesh, block[axis])

    def all_gather(self, x: np.ndarray, src: Sharding, mesh_dims: tuple[str, ...], axis: int,
                   block: Shape) -> np.ndarray:
        self._check("all_gather", x, src, mesh_dims=mesh_dims, axis=axis)
        return gather_from_mesh(x, mesh_dims, axis, self.mesh, block[axis])

    def all_to_all(self, x: np.ndarray, src: Sharding, mesh_dims: tuple[str, ...],
                   split_axis: int, concat_axis: int, block: Shape) -> np.ndarray:
        self._check("all_to_all", x, src, mesh_dims=mesh_dims, split_axis=split_axis,
                    concat_axis=concat_axis)
        if split_axis == concat_axis:
            return x  # the minor mesh dims of a dim moved to its own end: nothing moves
        gathered = gather_from_mesh(x, mesh_dims, concat_axis, self.mesh, block[concat_axis])
        return scatter_into_mesh(gathered, mesh_dims, split_axis, self.mesh, block[split_axis])

    def local_slice(self, x: np.ndarray, src: Sharding, mesh_dims: tuple[str, ...], axis: int,
                    block: Shape) -> np.ndarray:
        self._check("local_slice", x, src, mesh_dims=mesh_dims, axis=axis)
        return scatter_into_mesh(x, mesh_dims, axis, self.mesh, block[axis])

    def make_partial(self, x: np.ndarray, src: Sharding, mesh_dims: tuple[str, ...],
                     op: ReduceOp) -> np.ndarray:
        self._check("make_partial", x, src, mesh_dims=mesh_dims, op=op)
        return place_partial(x, Sharding(src.dims, tuple((m, op) for m in mesh_dims)),
                             self.mesh)
