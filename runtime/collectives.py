"""Collectives on stacked arrays (see `stacked` for the representation).

Each function takes the operand's stacked array and `Sharding` and returns the stacked array of
the result, whose sharding is exactly `opdefs.apply_collective` of the operand's: gathered mesh
dims are the minor-most suffix of a tensor dim's tuple, and scattered or sliced mesh dims are
appended minor-most. Data moves by reshapes, axis moves and reductions over mesh axes, never by
a loop over devices, on meshes of any rank and over groups of several mesh dims.

Argument names match the op attributes of the IR, so `apply_step` runs a collective op (or a
relayout planner step) from its kind and attributes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from math import prod

import numpy as np

from dtensor_compiler.ir import geometry
from dtensor_compiler.ir.opdefs import apply_collective
from dtensor_compiler.ir.sharding import MeshShape, Sharding
from dtensor_compiler.runtime.stacked import check_stacked, place_partial, reduce_mesh_axes


def _check(kind: str, attrs: Mapping[str, object], src: Sharding, x: np.ndarray,
           mesh: MeshShape) -> None:
    """Raise ValueError unless `x` is laid out as `src` and the collective applies to it."""
    check_stacked(x, src, mesh)
    apply_collective(kind, dict(attrs), src)


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


def all_reduce(x: np.ndarray, mesh_dims: Sequence[str], op: str, sharding: Sharding,
               mesh: MeshShape) -> np.ndarray:
    _check("all_reduce", {"mesh_dims": mesh_dims, "op": op}, sharding, x, mesh)
    return reduce_mesh_axes(x, mesh_dims, op, mesh)


def reduce_scatter(x: np.ndarray, mesh_dims: Sequence[str], op: str, axis: int,
                   sharding: Sharding, mesh: MeshShape) -> np.ndarray:
    _check("reduce_scatter", {"mesh_dims": mesh_dims, "op": op, "axis": axis}, sharding, x, mesh)
    return _scatter_into_mesh(reduce_mesh_axes(x, mesh_dims, op, mesh), mesh_dims, axis, mesh)


def all_gather(x: np.ndarray, mesh_dims: Sequence[str], axis: int, sharding: Sharding,
               mesh: MeshShape) -> np.ndarray:
    _check("all_gather", {"mesh_dims": mesh_dims, "axis": axis}, sharding, x, mesh)
    return _gather_from_mesh(x, mesh_dims, axis, mesh)


def all_to_all(x: np.ndarray, mesh_dims: Sequence[str], split_axis: int, concat_axis: int,
               sharding: Sharding, mesh: MeshShape) -> np.ndarray:
    attrs = {"mesh_dims": mesh_dims, "split_axis": split_axis, "concat_axis": concat_axis}
    _check("all_to_all", attrs, sharding, x, mesh)
    gathered = _gather_from_mesh(x, mesh_dims, concat_axis, mesh)
    return _scatter_into_mesh(gathered, mesh_dims, split_axis, mesh)


def local_slice(x: np.ndarray, mesh_dims: Sequence[str], axis: int, sharding: Sharding,
                mesh: MeshShape) -> np.ndarray:
    _check("local_slice", {"mesh_dims": mesh_dims, "axis": axis}, sharding, x, mesh)
    return _scatter_into_mesh(x, mesh_dims, axis, mesh)


def make_partial(x: np.ndarray, mesh_dims: Sequence[str], op: str, sharding: Sharding,
                 mesh: MeshShape) -> np.ndarray:
    _check("make_partial", {"mesh_dims": mesh_dims, "op": op}, sharding, x, mesh)
    return place_partial(x, Sharding(sharding.dims, tuple((m, op) for m in mesh_dims)), mesh)


COLLECTIVES: dict[str, Callable[..., np.ndarray]] = {
    "all_reduce": all_reduce,
    "reduce_scatter": reduce_scatter,
    "all_gather": all_gather,
    "all_to_all": all_to_all,
    "local_slice": local_slice,
    "make_partial": make_partial,
}


def apply_step(x: np.ndarray, kind: str, attrs: Mapping[str, object], src: Sharding,
               mesh: MeshShape) -> np.ndarray:
    """Run the collective `kind` with IR attributes `attrs` on `x`, laid out as `src`."""
    if kind not in COLLECTIVES:
        raise ValueError(f"{kind!r} is not a collective; known: {sorted(COLLECTIVES)}")
    return COLLECTIVES[kind](x, sharding=src, mesh=mesh, **attrs)
