"""The simulated mesh's communicator: collectives on stacked arrays (see `stacked`).

Each method takes the operand's stacked array, its `Sharding` and the collective op's
attributes, and returns the stacked array of the result, whose sharding is exactly what the
collective's definition (`CollectiveDef.transfer`) makes of the operand's: gathered mesh dims
are the minor-most suffix of a tensor dim's tuple, and scattered or sliced mesh dims are
appended minor-most. Data moves by reshapes, axis moves and reductions over mesh axes, never by
a loop over devices, on meshes of any rank and over groups of several mesh dims.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import prod

import numpy as np

from dtensor_compiler.ir import geometry, opdef
from dtensor_compiler.ir.sharding import MeshShape, ReduceOp, Sharding
from dtensor_compiler.runtime.stacked import check_stacked, place_partial, reduce_mesh_axes


def _scatter_into_mesh(x: np.ndarray, mesh_dims: Sequence[str], axis: int, mesh: MeshShape
                       ) -> np.ndarray:
    """Split local `axis` into blocks over `mesh_dims` (major to minor) and move each block
    index onto its mesh axis, which must have extent 1. A view."""
    k = len(mesh.dims)
    targets = [mesh.index(m) for m in mesh_dims]
    counts = tuple(mesh.size(m) for m in mesh_dims)
    local = x.shape[k:]
    if not geometry.splits(local[axis], prod(counts)):
        raise ValueError(f"dim {axis} of local size {local[axis]} does not split into "
                         f"{prod(counts)} blocks")
    kept = [j for j in range(k) if j not in targets]
    squeezed = x.reshape([x.shape[j] for j in kept] + list(local))
    at = len(kept) + axis
    block = geometry.block_size(local[axis], prod(counts))
    split = squeezed.reshape(squeezed.shape[:at] + counts + (block,) + squeezed.shape[at + 1:])
    block_of = {t: at + i for i, t in enumerate(targets)}
    kept_at = {j: i for i, j in enumerate(kept)}
    mesh_order = [block_of[j] if j in block_of else kept_at[j] for j in range(k)]
    local_order = [len(kept) + i for i in range(axis)] + [at + len(counts)] + [
        at + len(counts) + 1 + i for i in range(len(local) - axis - 1)]
    return split.transpose(mesh_order + local_order)


def _gather_from_mesh(x: np.ndarray, mesh_dims: Sequence[str], axis: int, mesh: MeshShape
                      ) -> np.ndarray:
    """Inverse of `_scatter_into_mesh`: concatenate the blocks held along the mesh axes of
    `mesh_dims` (major to minor) into local `axis`, leaving those mesh axes with extent 1."""
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
    return moved.reshape(out_shape)


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
                       op: ReduceOp, axis: int) -> np.ndarray:
        self._check("reduce_scatter", x, src, mesh_dims=mesh_dims, op=op, axis=axis)
        reduced = reduce_mesh_axes(x, mesh_dims, op, self.mesh)
        return _scatter_into_mesh(reduced, mesh_dims, axis, self.mesh)

    def all_gather(self, x: np.ndarray, src: Sharding, mesh_dims: tuple[str, ...], axis: int
                   ) -> np.ndarray:
        self._check("all_gather", x, src, mesh_dims=mesh_dims, axis=axis)
        return _gather_from_mesh(x, mesh_dims, axis, self.mesh)

    def all_to_all(self, x: np.ndarray, src: Sharding, mesh_dims: tuple[str, ...],
                   split_axis: int, concat_axis: int) -> np.ndarray:
        self._check("all_to_all", x, src, mesh_dims=mesh_dims, split_axis=split_axis,
                    concat_axis=concat_axis)
        gathered = _gather_from_mesh(x, mesh_dims, concat_axis, self.mesh)
        return _scatter_into_mesh(gathered, mesh_dims, split_axis, self.mesh)

    def local_slice(self, x: np.ndarray, src: Sharding, mesh_dims: tuple[str, ...], axis: int
                    ) -> np.ndarray:
        self._check("local_slice", x, src, mesh_dims=mesh_dims, axis=axis)
        return _scatter_into_mesh(x, mesh_dims, axis, self.mesh)

    def make_partial(self, x: np.ndarray, src: Sharding, mesh_dims: tuple[str, ...],
                     op: ReduceOp) -> np.ndarray:
        self._check("make_partial", x, src, mesh_dims=mesh_dims, op=op)
        return place_partial(x, Sharding(src.dims, tuple((m, op) for m in mesh_dims)),
                             self.mesh)
