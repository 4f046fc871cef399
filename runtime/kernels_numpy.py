"""Numpy kernels for every op of a localized module, on stacked arrays.

A kernel takes the op (for its attributes and types), its operands as stacked arrays (see
`stacked`: leading mesh axes, then the per-device local dims) and the mesh, and returns the
stacked result. The mesh axes are batch axes to every kernel: local axes are offset by the mesh
rank, and operands of different local ranks are aligned by inserting size-1 local dims right
after the mesh prefix, so broadcasting lines up on local dims only and replicated operands
(mesh extent 1) broadcast against sharded ones for free.

A kernel may return extent 1 on a mesh axis its result is sharded over when the value is the
same on every device there (a ``full``); the executor broadcasts it. Ops without operands build
their pending partial reductions themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from dtensor_compiler.ir.core import Operation
from dtensor_compiler.ir.opdefs import BINARY_UFUNCS, COLLECTIVES, REDUCTIONS, UNARY_UFUNCS
from dtensor_compiler.ir.sharding import MeshShape, Sharding
from dtensor_compiler.ir.types import numpy_dtype
from dtensor_compiler.runtime.collectives import apply_step
from dtensor_compiler.runtime.stacked import block_index, place_partial, to_stacked

Kernel = Callable[[Operation, Sequence[np.ndarray], MeshShape], np.ndarray]


def _sharding(op: Operation) -> Sharding:
    sharding = op.type.sharding
    assert sharding is not None, f"{op.name} result has no sharding in a localized module"
    return sharding


def align_local_rank(x: np.ndarray, rank: int, k: int) -> np.ndarray:
    """View `x` (mesh rank `k`) with size-1 local dims inserted after the mesh prefix so its
    local rank is `rank`."""
    return x.reshape(x.shape[:k] + (1,) * (rank - (x.ndim - k)) + x.shape[k:])


def _aligned(args: Sequence[np.ndarray], k: int) -> list[np.ndarray]:
    rank = max(a.ndim for a in args) - k
    return [align_local_rank(a, rank, k) for a in args]


def _ufunc(name: str) -> Kernel:
    ufunc = getattr(np, name)

    def kernel(op: Operation, args: Sequence[np.ndarray], mesh: MeshShape) -> np.ndarray:
        return ufunc(*_aligned(args, len(mesh.dims)))

    return kernel


def _where(op: Operation, args: Sequence[np.ndarray], mesh: MeshShape) -> np.ndarray:
    return np.where(*_aligned(args, len(mesh.dims)))


def _matmul(op: Operation, args: Sequence[np.ndarray], mesh: MeshShape) -> np.ndarray:
    return np.matmul(*_aligned(args, len(mesh.dims)))


def _einsum(op: Operation, args: Sequence[np.ndarray], mesh: MeshShape) -> np.ndarray:
    ins, out = op.attrs["spec"].replace(" ", "").split("->")
    spec = ",".join("..." + sub for sub in ins.split(",")) + "->..." + out
    return np.einsum(spec, *args, optimize=True)


def _reduction(reduce: Callable[..., np.ndarray]) -> Kernel:
    def kernel(op: Operation, args: Sequence[np.ndarray], mesh: MeshShape) -> np.ndarray:
        k = len(mesh.dims)
        axes = tuple(k + a for a in op.attrs["axes"])
        return reduce(args[0], axis=axes, keepdims=bool(op.attrs["keepdims"]))

    return kernel


def _argreduce(reduce: Callable[..., np.ndarray]) -> Kernel:
    def kernel(op: Operation, args: Sequence[np.ndarray], mesh: MeshShape) -> np.ndarray:
        axis = len(mesh.dims) + op.attrs["axis"]
        return reduce(args[0], axis=axis, keepdims=bool(op.attrs["keepdims"]))

    return kernel


def _transpose(op: Operation, args: Sequence[np.ndarray], mesh: MeshShape) -> np.ndarray:
    k = len(mesh.dims)
    return args[0].transpose(tuple(range(k)) + tuple(k + p for p in op.attrs["perm"]))


def _reshape(op: Operation, args: Sequence[np.ndarray], mesh: MeshShape) -> np.ndarray:
    x = args[0]
    return x.reshape(x.shape[: len(mesh.dims)] + op.type.shape)


def _broadcast_to(op: Operation, args: Sequence[np.ndarray], mesh: MeshShape) -> np.ndarray:
    k = len(mesh.dims)
    x = align_local_rank(args[0], op.type.rank, k)
    return np.broadcast_to(x, x.shape[:k] + op.type.shape)


def _astype(op: Operation, args: Sequence[np.ndarray], mesh: MeshShape) -> np.ndarray:
    return args[0].astype(numpy_dtype(op.type.dtype), copy=False)


def _slice(op: Operation, args: Sequence[np.ndarray], mesh: MeshShape) -> np.ndarray:
    a = op.attrs
    local = tuple(slice(b, e, s) for b, e, s in zip(a["start"], a["stop"], a["step"]))
    return args[0][(slice(None),) * len(mesh.dims) + local]


def _concatenate(op: Operation, args: Sequence[np.ndarray], mesh: MeshShape) -> np.ndarray:
    # operands agree on every sharded dim and pending reduction, so on their mesh extents
    return np.concatenate(args, axis=len(mesh.dims) + op.attrs["axis"])


def _take(op: Operation, args: Sequence[np.ndarray], mesh: MeshShape) -> np.ndarray:
    """Per device ``np.take(table, indices, axis)``, for all devices in one fancy index: the
    mesh axes are indexed by aranges that broadcast against the indices."""
    table, indices = args
    k = len(mesh.dims)
    axis = op.attrs["axis"]
    idx_rank = indices.ndim - k
    mesh_index = tuple(
        np.arange(table.shape[j]).reshape((1,) * j + (-1,) + (1,) * (k - j - 1 + idx_rank))
        for j in range(k)
    )
    rows = (slice(None),) * axis
    # advanced indices split by slices put their broadcast dims (mesh + index dims) first
    picked = table[mesh_index + rows + (indices,)]
    index_dims = list(range(k, k + idx_rank))
    return np.moveaxis(picked, index_dims, [d + axis for d in index_dims])


def _full(op: Operation, args: Sequence[np.ndarray], mesh: MeshShape) -> np.ndarray:
    dtype = numpy_dtype(op.type.dtype)
    out = np.full((1,) * len(mesh.dims) + op.type.shape, op.attrs["value"], dtype=dtype)
    return place_partial(out, _sharding(op), mesh)


def _iota(op: Operation, args: Sequence[np.ndarray], mesh: MeshShape) -> np.ndarray:
    """Each device counts from its block's offset along the iota dimension."""
    k = len(mesh.dims)
    shape = op.type.shape
    d = op.attrs["dimension"]
    dtype = numpy_dtype(op.type.dtype)
    sharding = _sharding(op)
    along = (1,) * k + tuple(s if i == d else 1 for i, s in enumerate(shape))
    offsets = (block_index(sharding.dims[d], mesh) * shape[d]).astype(dtype)
    counts = np.arange(shape[d], dtype=dtype).reshape(along)
    values = offsets.reshape(offsets.shape + (1,) * len(shape)) + counts
    out = np.broadcast_to(values, values.shape[:k] + shape)
    return place_partial(out, sharding, mesh)


def _constant(op: Operation, args: Sequence[np.ndarray], mesh: MeshShape) -> np.ndarray:
    return to_stacked(op.attrs["value"], _sharding(op), mesh)


def _collective(op: Operation, args: Sequence[np.ndarray], mesh: MeshShape) -> np.ndarray:
    src = op.operands[0].type.sharding
    assert src is not None, f"{op.name} operand has no sharding in a localized module"
    return apply_step(args[0], op.name, op.attrs, src, mesh)


_REDUCE_FUNCS: dict[str, Callable[..., np.ndarray]] = {
    "sum": np.sum, "max": np.max, "min": np.min, "prod": np.prod,
}

NUMPY_KERNELS: dict[str, Kernel] = {
    **{name: _ufunc(name) for name in UNARY_UFUNCS + BINARY_UFUNCS},
    **{name: _reduction(_REDUCE_FUNCS[kind]) for name, kind in REDUCTIONS.items()},
    **{name: _collective for name in COLLECTIVES},
    "where": _where,
    "matmul": _matmul,
    "einsum": _einsum,
    "argmax": _argreduce(np.argmax),
    "argmin": _argreduce(np.argmin),
    "transpose": _transpose,
    "reshape": _reshape,
    "broadcast_to": _broadcast_to,
    "astype": _astype,
    "slice": _slice,
    "concatenate": _concatenate,
    "take": _take,
    "full": _full,
    "iota": _iota,
    "constant": _constant,
}
"""Kernel of every op a localized module may hold (``relayout`` is gone by then)."""
