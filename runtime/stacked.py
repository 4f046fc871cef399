"""The stacked representation of a distributed value on the simulated mesh.

A value with `Sharding` ``s`` on a `MeshShape` with ordered dims of sizes ``n_0 .. n_{k-1}`` is
ONE numpy array of shape ``(e_0, ..., e_{k-1}) + local_shape``:

- ``e_j = n_j`` when the value differs along mesh dim ``j``: some tensor dim is sharded over it,
  or a reduction over it is pending (``partial``);
- ``e_j = 1`` when the value is replicated over mesh dim ``j``; numpy broadcasting supplies the
  copies, so replicated work is done once.

Device ids are row-major over the mesh coordinates. A tensor dim sharded over mesh dims
``(x, y)`` (major to minor) holds, on the device with coordinates ``(.., c_x, .., c_y, ..)``,
block ``c_x * n_y + c_y`` of room ``ceil(global / (n_x * n_y))`` (`ir.geometry`). Where the
blocks do not divide the dim, the stacked array is that of the dim padded at its end: the
trailing blocks are partly or wholly padding. Padding made here (`to_stacked`,
`pad_to_blocks`) is zeros; kernels may leave anything there, and only the valid part of a
block is ever read back (`from_stacked`, `device_shard`).

A pending partial reduction over mesh dim ``m`` means the true value is that reduction over
mesh axis ``m`` (sum, max, min or prod). Several pending reductions are applied in mesh-dim
order.

Every array in this representation is treated as read-only: kernels and collectives return new
arrays or views, never write into their operands, except for the in-place elementwise kernels
a `Program` uses where an operand dies (a fresh temporary, or a donated argument the executor
found no other storage referring to).
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
    """The element `x` with ``op(x, y) == y`` for every `y` of `dtype`: for a float sum
    -0.0, since ``0.0 + -0.0`` is ``0.0`` (a -0.0 held by one device of a pending sum would
    come back +0.0)."""
    dtype = np.dtype(dtype)
    if op == "sum":
        return -dtype.type(0) if is_floating(dtype) or dtype.kind == "c" else dtype.type(0)
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
    if dtype.kind == "c":  # numpy orders complex numbers by real part, then imaginary
        edge = -np.inf if lowest else np.inf
        return dtype.type(complex(edge, edge))
    raise ValueError(f"{op} has no identity for dtype {dtype}")


def reduce_mesh_axes(x: np.ndarray, mesh_dims: Sequence[str], op: str, mesh: MeshShape
                     ) -> np.ndarray:
    """Apply reduction `op` over the mesh axes of `mesh_dims`, keeping them with extent 1.
    A sum starts from its identity (-0.0 for floats: numpy's starts from 0.0, which turns
    the -0.0 one device holds into 0.0)."""
    axes = tuple(sorted(mesh.index(m) for m in mesh_dims))
    if op == "sum":
        return np.add.reduce(x, axis=axes, dtype=x.dtype, keepdims=True,
                             initial=reduction_identity(op, x.dtype))
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
    x = pad_to_blocks(x, [geometry.padded_extent(n, sharding.num_shards(i, mesh))
                          for i, n in enumerate(x.shape)])
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


def pad_to_blocks(x: np.ndarray, extents: Sequence[int], offset: int = 0) -> np.ndarray:
    """`x` with its dims from `offset` on (as many as `extents` has) padded with zeros at their
    end up to `extents` (`x` itself when nothing is short)."""
    short = [(0, e - n) for n, e in zip(x.shape[offset:], extents)]
    if not any(after for _, after in short):
        return x
    rest = [(0, 0)] * (x.ndim - offset - len(short))
    return np.pad(x, [(0, 0)] * offset + short + rest)


def trim_to(x: np.ndarray, extents: Sequence[int], offset: int = 0) -> np.ndarray:
    """A view of `x` cut to `extents` along its dims from `offset` on (as many as `extents`
    has)."""
    if tuple(x.shape[offset:offset + len(extents)]) == tuple(extents):
        return x
    return x[(slice(None),) * offset + tuple(slice(0, e) for e in extents)]


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


def from_stacked(stacked: np.ndarray, sharding: Sharding, mesh: MeshShape,
                 shape: Sequence[int] | None = None) -> np.ndarray:
    """The global value of global `shape` of a stacked array: pending reductions applied,
    blocks put together, padding cut off (`shape` None: the blocks have no padding). A view
    of `stacked` when no data has to move (a replicated value)."""
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
    padded = [n * sharding.num_shards(i, mesh) for i, n in enumerate(x.shape[k:])]
    out = x.transpose(ones + blocks_then_local).reshape(padded)
    return out if shape is None else trim_to(out, shape)


def copy_index(coords: Sequence[int], extents: Sequence[int]) -> tuple[int, ...]:
    """Where along the leading mesh axes (of `extents`) the device at mesh `coords` finds its
    copy: a mesh axis of extent 1 holds one copy for every device along it."""
    return tuple(c if e > 1 else 0 for c, e in zip(coords, extents))


def device_shard(stacked: np.ndarray, sharding: Sharding, mesh: MeshShape, device_id: int,
                 shape: Sequence[int] | None = None) -> np.ndarray:
    """The valid part of one device's block of a value of global `shape` (a copy; `shape`
    None: the blocks have no padding)."""
    check_stacked(stacked, sharding, mesh)
    coords = geometry.device_coords(device_id, mesh)
    block = stacked[copy_index(coords, stacked.shape)]
    if shape is not None:
        block = trim_to(block, geometry.device_block(tuple(shape), sharding.dims, mesh,
                                                     coords)[1])
    return np.array(block)


def mismatch(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Where `x` differs from `ref` (NaN equals NaN)."""
    differ = x != ref
    if is_floating(x.dtype) or x.dtype.kind == "c":
        differ &= ~(np.isnan(x) & np.isnan(ref))
    return differ


def from_device_shards(shards: Sequence[np.ndarray], sharding: Sharding, mesh: MeshShape,
                       shape: Sequence[int] | None = None, devices: Sequence[int] | None = None,
                       extent: Sequence[int] | None = None) -> np.ndarray:
    """The stacked array of a value of global `shape` from the valid part of each device's
    block, given in device-id order (each padded here to the uniform block shape; `shape`
    None: the blocks have no padding, all have device 0's shape). With `devices` (ascending
    ids that form a box of `extent` along the mesh dims: one client's), only theirs are
    given, and the array is stacked over that box.

    Each block must have its exact valid shape, and replicated copies must be equal; the
    first device whose block is wrong is named in the ValueError.
    """
    ids = list(range(mesh.num_devices)) if devices is None else list(devices)
    sizes = mesh.sizes if extent is None else tuple(extent)
    if len(shards) != len(ids):
        held = f"{mesh.text()} has" if devices is None else "this client holds"
        raise ValueError(f"{held} {len(ids)} devices, got {len(shards)} shards")
    if shape is None:
        shape = [n * sharding.num_shards(i, mesh) for i, n in enumerate(np.shape(shards[0]))]
    shape = tuple(shape)
    local = sharding.local_shape(shape, mesh)
    for d, s in zip(ids, shards):
        _, valid = geometry.device_block(shape, sharding.dims, mesh,
                                         geometry.device_coords(d, mesh))
        if np.shape(s) != valid:
            raise ValueError(f"device {d} holds shape {list(np.shape(s))}, its block of a "
                             f"{list(shape)} tensor laid out as {sharding.text()} has shape "
                             f"{list(valid)}")
    full = np.stack([pad_to_blocks(np.asarray(s), local) for s in shards]
                    ).reshape(sizes + tuple(local))
    extents = tuple(e if n > 1 else 1 for e, n in zip(sizes, mesh_extents(sharding, mesh)))
    first = full[tuple(slice(0, e) for e in extents)]
    differ = mismatch(full, first).reshape(len(ids), -1).any(axis=1)
    if differ.any():
        bad = int(np.argmax(differ))
        copy = copy_index([int(c) for c in np.unravel_index(bad, sizes)], extents)
        raise ValueError(f"device {ids[bad]} holds a replicated copy of a {sharding.text()} "
                         f"value that differs from the copy on device "
                         f"{ids[int(np.ravel_multi_index(copy, sizes))]}")
    return np.ascontiguousarray(first).reshape(np.shape(first))  # (it makes 0-d arrays 1-d)


class StackedStorage:
    """A distributed value held as one stacked array: the simulated mesh's storage type
    (implements `backends.Storage`). The array is read-only."""

    __slots__ = ("stacked", "sharding", "mesh", "shape")

    def __init__(self, stacked: np.ndarray, sharding: Sharding, mesh: MeshShape,
                 shape: Sequence[int], checked: bool = True) -> None:
        """A value of global `shape`. `checked=False` skips checking the mesh extents and the
        block shape (for a program's results, whose types the program checked)."""
        shape = tuple(shape)
        if checked:
            check_stacked(stacked, sharding, mesh)
            local = sharding.local_shape(shape, mesh)
            if stacked.shape[len(mesh.dims):] != local:
                raise ValueError(f"blocks of shape {list(stacked.shape[len(mesh.dims):])} do "
                                 f"not hold a {list(shape)} value laid out as "
                                 f"{sharding.text()}, whose blocks are {list(local)}")
        if stacked.flags.writeable:
            stacked = stacked.view()
            stacked.flags.writeable = False
        self.stacked = stacked
        self.sharding = sharding
        self.mesh = mesh
        self.shape = shape

    @classmethod
    def from_global(cls, value: np.ndarray, sharding: Sharding, mesh: MeshShape
                    ) -> StackedStorage:
        """A global array laid out as `sharding`; never a view of `value`."""
        stacked = to_stacked(value, sharding, mesh)
        if np.may_share_memory(stacked, value):
            stacked = stacked.copy()
        return cls(stacked, sharding, mesh, np.shape(value))

    @classmethod
    def from_device_shards(cls, shards: Sequence[np.ndarray], sharding: Sharding,
                           mesh: MeshShape, shape: Sequence[int]) -> StackedStorage:
        return cls(from_device_shards(shards, sharding, mesh, shape), sharding, mesh, shape)

    @property
    def dtype(self) -> np.dtype:
        return self.stacked.dtype

    @property
    def local_shape(self) -> tuple[int, ...]:
        """The (padded) block shape every device holds."""
        return self.stacked.shape[len(self.mesh.dims):]

    def alias(self) -> StackedStorage:
        """The same shards as a storage of its own (a new view of the same array)."""
        return StackedStorage(self.stacked.view(), self.sharding, self.mesh, self.shape,
                              checked=False)

    def to_global(self) -> np.ndarray:
        """The global value as a new array."""
        return np.array(from_stacked(self.stacked, self.sharding, self.mesh, self.shape))

    def device_shard(self, device_id: int) -> np.ndarray:
        """The valid part of one device's block (a copy)."""
        return device_shard(self.stacked, self.sharding, self.mesh, device_id, self.shape)
