"""The stacked representation of a distributed value on the simulated mesh.

A value with `Sharding` ``s`` on a `MeshShape` with ordered dims of sizes ``n_0 .. n_{k-1}`` is
ONE numpy array of shape ``(e_0, ..., e_{k-1}) + local_shape``:

- ``e_j = n_j`` when the value differs along mesh dim ``j``: some tensor dim is sharded over it,
  or a reduction over it is pending (``partial``);
- ``e_j = 1`` when the value is replicated over mesh dim ``j``; numpy broadcasting supplies the
  copies, so replicated work is done once.

Device ids are row-major over the mesh coordinates. A tensor dim sharded over mesh dims
``(x, y)`` (major to minor) holds, on the device with coordinates ``(.., c_x, .., c_y, ..)``,
block ``c_x * n_y + c_y`` of size ``global / (n_x * n_y)``. A pending partial reduction over
mesh dim ``m`` means the true value is that reduction over mesh axis ``m`` (sum, max, min or
prod). Several pending reductions are applied in mesh-dim order.

Every array in this representation is treated as read-only: kernels and collectives return new
arrays or views, never write into their operands.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dtensor_compiler.ir import geometry
from dtensor_compiler.ir.sharding import MeshShape, Sharding
from dtensor_compiler.ir.types import float_extremes, is_floating

REDUCE_UFUNCS: dict[str, np.ufunc] = {
    "sum": np.add, "max": np.maximum, "min": np.minimum, "prod": np.multiply,
}


def mesh_extents(sharding: Sharding, mesh: MeshShape) -> tuple[int, ...]:
    """The leading (mesh) extents of a stacked array with `sharding`."""
    used = sharding.used_mesh_dims()
    return tuple(size if name in used else 1 for name, size in mesh.dims)


def expected_stacked_shape(local_shape: Sequence[int], sharding: Sharding, mesh: MeshShape
                           ) -> tuple[int, ...]:
    return mesh_extents(sharding, mesh) + tuple(local_shape)


def block_index(mesh_dims: Sequence[str], mesh: MeshShape) -> np.ndarray:
    """Each device's block number along a tensor dim sharded over `mesh_dims` (major to
    minor), as an int64 array with one axis per mesh dim (extent 1 for the others)."""
    k = len(mesh.dims)

    def coord(m: str) -> np.ndarray:
        j = mesh.index(m)
        return np.arange(mesh.size(m)).reshape((1,) * j + (-1,) + (1,) * (k - j - 1))

    return geometry.block_number(mesh_dims, coord, mesh, np.zeros((1,) * k, dtype=np.int64))


def reduction_identity(op: str, dtype: np.dtype) -> np.generic:
    """The element `x` with ``op(x, y) == y`` for every `y` of `dtype`."""
    dtype = np.dtype(dtype)
    if op == "sum":
        return dtype.type(0)
    if op == "prod":
        return dtype.type(1)
    if op not in ("max", "min"):
        raise ValueError(f"unknown reduction {op!r}")
    lowest = op == "max"
    if dtype == np.bool_:
        return np.bool_(not lowest)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return dtype.type(info.min if lowest else info.max)
    if is_floating(dtype):
        lo, hi = float_extremes(dtype)
        return dtype.type(lo if lowest else hi)
    raise ValueError(f"{op} has no identity for dtype {dtype}")


def reduce_mesh_axes(x: np.ndarray, mesh_dims: Sequence[str], op: str, mesh: MeshShape
                     ) -> np.ndarray:
    """Apply reduction `op` over the mesh axes of `mesh_dims`, keeping them with extent 1."""
    axes = tuple(sorted(mesh.index(m) for m in mesh_dims))
    return REDUCE_UFUNCS[op].reduce(x, axis=axes, dtype=x.dtype, keepdims=True)


def place_partial(x: np.ndarray, sharding: Sharding, mesh: MeshShape) -> np.ndarray:
    """Spread a value held whole (extent 1 on every partial mesh axis) into a pending partial
    layout: the value at coordinate 0 of the partial mesh dims, reduction identities elsewhere.

    A coordinate whose first nonzero partial dim (in mesh order) is ``m`` holds the identity of
    ``m``'s reduction, so the pending reductions give the value back in any order.
    """
    partial = sharding.partial_map
    if not partial:
        return x
    order = sorted(partial, key=mesh.index)
    shape = list(x.shape)
    for m in order:
        shape[mesh.index(m)] = mesh.size(m)
    out = np.empty(shape, dtype=x.dtype)
    for m in reversed(order):
        j = mesh.index(m)
        rest = (slice(None),) * j + (slice(1, None),)
        out[rest] = reduction_identity(partial[m], x.dtype)
    origin = tuple(slice(0, 1) if m in partial else slice(None) for m in mesh.names)
    out[origin] = x
    return out


def to_stacked(global_array: np.ndarray, sharding: Sharding, mesh: MeshShape) -> np.ndarray:
    """Split a global array into the stacked form of `sharding`: a contiguous array, which
    may be a view of `global_array` when no data has to move."""
    x = np.asarray(global_array)
    if sharding.is_replicated() and sharding.rank == x.ndim:
        return np.ascontiguousarray(x).reshape((1,) * len(mesh.dims) + x.shape)
    problems = sharding.problems(mesh, tuple(x.shape))
    if problems:
        raise ValueError(f"cannot lay out {list(x.shape)} as {sharding.text()}: {problems[0]}")
    split_shape: list[int] = []
    block_axis: dict[str, int] = {}
    local_axes: list[int] = []
    for i, (size, dims) in enumerate(zip(x.shape, sharding.dims)):
        for m in dims:
            block_axis[m] = len(split_shape)
            split_shape.append(mesh.size(m))
        local_axes.append(len(split_shape))
        split_shape.append(geometry.block_size(size, sharding.num_shards(i, mesh)))
    # one trailing size-1 axis per mesh dim no tensor dim is split over
    split = x.reshape(split_shape + [1] * (len(mesh.dims) - len(block_axis)))
    spare = iter(range(len(split_shape), split.ndim))
    perm = [block_axis[m] if m in block_axis else next(spare) for m in mesh.names]
    stacked = np.ascontiguousarray(split.transpose(perm + local_axes))
    return place_partial(stacked, sharding, mesh)


def check_stacked(stacked: np.ndarray, sharding: Sharding, mesh: MeshShape) -> None:
    """Raise ValueError unless `stacked` has the exact mesh extents of `sharding`."""
    k = len(mesh.dims)
    if stacked.ndim != k + sharding.rank:
        raise ValueError(f"a stacked {sharding.text()} value on {mesh.text()} has rank "
                         f"{k + sharding.rank}, got shape {list(stacked.shape)}")
    extents = mesh_extents(sharding, mesh)
    if stacked.shape[:k] != extents:
        raise ValueError(f"a stacked {sharding.text()} value on {mesh.text()} has mesh extents "
                         f"{list(extents)}, got shape {list(stacked.shape)}")


def from_stacked(stacked: np.ndarray, sharding: Sharding, mesh: MeshShape) -> np.ndarray:
    """The global value of a stacked array: pending reductions applied, blocks put together.
    A view of `stacked` when no data has to move (a replicated value)."""
    check_stacked(stacked, sharding, mesh)
    x = stacked
    for m, op in sorted(sharding.partial, key=lambda p: mesh.index(p[0])):
        x = reduce_mesh_axes(x, (m,), op, mesh)
    k = len(mesh.dims)
    blocks_then_local: list[int] = []
    for i, dims in enumerate(sharding.dims):
        blocks_then_local += [mesh.index(m) for m in dims] + [k + i]
    sharded = set(blocks_then_local)
    ones = [j for j in range(k) if j not in sharded]  # extent 1 by now
    global_shape = sharding.global_shape(x.shape[k:], mesh)
    return x.transpose(ones + blocks_then_local).reshape(global_shape)


def copy_index(coords: Sequence[int], extents: Sequence[int]) -> tuple[int, ...]:
    """Where along the leading mesh axes (of `extents`) the device at mesh `coords` finds its
    copy: a mesh axis of extent 1 holds one copy for every device along it."""
    return tuple(c if e > 1 else 0 for c, e in zip(coords, extents))


def device_shard(stacked: np.ndarray, sharding: Sharding, mesh: MeshShape, device_id: int
                 ) -> np.ndarray:
    """One device's local array (a copy)."""
    check_stacked(stacked, sharding, mesh)
    coords = geometry.device_coords(device_id, mesh)
    return np.array(stacked[copy_index(coords, stacked.shape)])


def _mismatch(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Where `x` differs from `ref` (NaN equals NaN)."""
    differ = x != ref
    if is_floating(x.dtype) or x.dtype.kind == "c":
        differ &= ~(np.isnan(x) & np.isnan(ref))
    return differ


def from_device_shards(shards: Sequence[np.ndarray], sharding: Sharding, mesh: MeshShape
                       ) -> np.ndarray:
    """The stacked array of per-device local arrays given in device-id order.

    Replicated copies must be equal; the first device whose copy differs is named in the
    ValueError.
    """
    if len(shards) != mesh.num_devices:
        raise ValueError(f"{mesh.text()} has {mesh.num_devices} devices, got {len(shards)} shards")
    local = np.shape(shards[0])
    for d, s in enumerate(shards):
        if np.shape(s) != local:
            raise ValueError(f"device {d} holds shape {list(np.shape(s))}, device 0 holds "
                             f"{list(local)}")
    full = np.stack([np.asarray(s) for s in shards]).reshape(mesh.sizes + tuple(local))
    extents = mesh_extents(sharding, mesh)
    first = full[tuple(slice(0, e) for e in extents)]
    differ = _mismatch(full, first).reshape(mesh.num_devices, -1).any(axis=1)
    if differ.any():
        bad = int(np.argmax(differ))
        raise ValueError(f"device {bad} holds a replicated copy of a {sharding.text()} value "
                         f"that differs from the copy on device "
                         f"{_first_copy_device(bad, extents, mesh)}")
    return np.ascontiguousarray(first)


def _first_copy_device(device_id: int, extents: tuple[int, ...], mesh: MeshShape) -> int:
    coords = geometry.device_coords(device_id, mesh)
    return int(np.ravel_multi_index(copy_index(coords, extents), mesh.sizes))


class StackedStorage:
    """A distributed value held as one stacked array: the simulated mesh's storage type
    (implements `backends.Storage`). The array is read-only."""

    __slots__ = ("stacked", "sharding", "mesh")

    def __init__(self, stacked: np.ndarray, sharding: Sharding, mesh: MeshShape,
                 checked: bool = True) -> None:
        """`checked=False` skips checking the mesh extents (for a program's results, whose
        types the program checked)."""
        if checked:
            check_stacked(stacked, sharding, mesh)
        if stacked.flags.writeable:
            stacked = stacked.view()
            stacked.flags.writeable = False
        self.stacked = stacked
        self.sharding = sharding
        self.mesh = mesh

    @classmethod
    def from_global(cls, value: np.ndarray, sharding: Sharding, mesh: MeshShape
                    ) -> StackedStorage:
        """A global array laid out as `sharding`; never a view of `value`."""
        stacked = to_stacked(value, sharding, mesh)
        if np.may_share_memory(stacked, value):
            stacked = stacked.copy()
        return cls(stacked, sharding, mesh)

    @classmethod
    def from_device_shards(cls, shards: Sequence[np.ndarray], sharding: Sharding,
                           mesh: MeshShape) -> StackedStorage:
        return cls(from_device_shards(shards, sharding, mesh), sharding, mesh)

    @property
    def dtype(self) -> np.dtype:
        return self.stacked.dtype

    @property
    def local_shape(self) -> tuple[int, ...]:
        return self.stacked.shape[len(self.mesh.dims):]

    def to_global(self) -> np.ndarray:
        """The global value as a new array."""
        return np.array(from_stacked(self.stacked, self.sharding, self.mesh))

    def device_shard(self, device_id: int) -> np.ndarray:
        """One device's local array (a copy)."""
        return device_shard(self.stacked, self.sharding, self.mesh, device_id)
