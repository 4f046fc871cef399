"""The numpy backend's kernels: one per op definition.

A kernel is built for one op and its `ExecContext` (see `executor`) and maps numpy arrays to a
numpy array. Arrays have `ctx.mesh_axes` leading mesh axes (the simulated mesh's stacked form:
one array for every device; none for one device's shard or a global value), which are batch
axes to every kernel: local axes are offset by them, and operands of different local ranks are
aligned by inserting size-1 local dims right after them, so broadcasting lines up on local dims
only and replicated operands (mesh extent 1) broadcast against sharded ones for free.

A kernel may return extent 1 on a mesh axis its result is sharded over when the value is the
same on every device there (a ``full``); the executor broadcasts it. Sources build their
pending partial reductions themselves.

`evaluate` runs a kernel on global arrays (a context with no mesh axes): constant folding uses
it, so the compiler has one definition of what each op computes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from dtensor_compiler.ir import geometry, opdef
from dtensor_compiler.ir.attrs import int_attr, str_attr
from dtensor_compiler.ir.core import Operation, Value
from dtensor_compiler.ir.mesh_shape import MeshShape
from dtensor_compiler.ir.ops import (
    contractions,
    elementwise,
    indexing,
    padding,
    reductions,
    shape,
    sources,
)
from dtensor_compiler.ir.sharding import ReduceOp, Sharding
from dtensor_compiler.ir.types import is_low_precision, numpy_dtype
from dtensor_compiler.runtime.executor import ExecContext, KernelFn, KernelTable
from dtensor_compiler.runtime.stacked import reduction_identity
from dtensor_compiler.runtime.stacked_context import StackedContext

NUMPY_KERNELS = KernelTable("numpy")
kernel = NUMPY_KERNELS.register

_REDUCE_FUNCS: dict[ReduceOp, Callable[..., np.ndarray]] = {
    ReduceOp.SUM: np.sum, ReduceOp.MAX: np.max, ReduceOp.MIN: np.min, ReduceOp.PROD: np.prod,
}


def _sharding(op: Operation) -> Sharding:
    sharding = op.type.sharding
    assert sharding is not None, f"{op.name} result has no sharding in a localized module"
    return sharding


def align_local_rank(x: np.ndarray, rank: int, k: int) -> np.ndarray:
    """View `x` (mesh rank `k`) with size-1 local dims inserted after the mesh prefix so its
    local rank is `rank`."""
    return x.reshape(x.shape[:k] + (1,) * (rank - (x.ndim - k)) + x.shape[k:])


def _all_ones(value: Value) -> bool:
    """A value every device holds whole, of one element: its array is all size-1 axes, which
    broadcast the same however they are aligned."""
    sharding = value.type.sharding
    return all(n == 1 for n in value.type.shape) and (
        sharding is None or not sharding.used_mesh_dims())


def _aligned(fn: Callable[..., np.ndarray], op: Operation, ctx: ExecContext) -> KernelFn:
    """`fn` applied to the operands, aligned on local dims when their local ranks differ (the
    ranks are known when the kernel is built)."""
    ranks = [v.type.rank for v in op.operands]
    rank = max(ranks, default=0)
    k = ctx.mesh_axes
    if k == 0 or all(r == rank or _all_ones(v) for r, v in zip(ranks, op.operands)):
        return fn  # numpy's own broadcasting lines them up already

    def aligned(*args: np.ndarray) -> np.ndarray:
        return fn(*[align_local_rank(a, rank, k) for a in args])
    return aligned


@kernel(*elementwise.UFUNCS.values())
def _ufunc(op: Operation, ctx: ExecContext) -> KernelFn:
    return _aligned(getattr(np, op.name), op, ctx)


@NUMPY_KERNELS.register_in_place(*elementwise.UFUNCS.values())
def _ufunc_into(op: Operation, ctx: ExecContext, into: int) -> KernelFn:
    """The ufunc with ``out=`` the operand `into`'s array when it is writeable (a temporary
    or a donated argument that dies here; numpy copies first where operands overlap it)."""
    ufunc = getattr(np, op.name)
    fresh = _aligned(ufunc, op, ctx)
    if fresh is ufunc:  # no local dims to line up
        def run(*args: np.ndarray) -> np.ndarray:
            target = args[into]
            return ufunc(*args, out=target) if target.flags.writeable else ufunc(*args)
        return run
    rank = max(v.type.rank for v in op.operands)
    k = ctx.mesh_axes

    def aligned(*args: np.ndarray) -> np.ndarray:
        target = args[into]
        if not target.flags.writeable:
            return fresh(*args)
        return ufunc(*[align_local_rank(a, rank, k) for a in args], out=target)
    return aligned


@kernel(elementwise.STOP_GRADIENT)
def _stop_gradient(op: Operation, ctx: ExecContext) -> KernelFn:
    return lambda x: x


@kernel(elementwise.WHERE)
def _where(op: Operation, ctx: ExecContext) -> KernelFn:
    return _aligned(np.where, op, ctx)


@kernel(elementwise.ASTYPE)
def _astype(op: Operation, ctx: ExecContext) -> KernelFn:
    dtype = numpy_dtype(op.type.dtype)
    return lambda x: x.astype(dtype, copy=False)


@kernel(elementwise.REAL, elementwise.IMAG)
def _component(op: Operation, ctx: ExecContext) -> KernelFn:
    part = np.real if op.name == "real" else np.imag
    return lambda x: np.ascontiguousarray(part(x))


@kernel(contractions.MATMUL)
def _matmul(op: Operation, ctx: ExecContext) -> KernelFn:
    """numpy's matmul; a stack of matrices times one matrix per device is one product per
    device, its batch dims merged into rows (one big GEMM, not one per batch element)."""
    a, b = op.operands
    if a.type.rank < 3 or b.type.rank != 2:
        return _aligned(np.matmul, op, ctx)
    k = ctx.mesh_axes

    def merged(x: np.ndarray, w: np.ndarray) -> np.ndarray:
        rows = math.prod(x.shape[k:-1])
        product = np.matmul(x.reshape(x.shape[:k] + (rows, x.shape[-1])), w)
        return product.reshape(product.shape[:k] + x.shape[k:-1] + product.shape[-1:])
    return merged


@kernel(contractions.EINSUM)
def _einsum(op: Operation, ctx: ExecContext) -> KernelFn:
    spec = str_attr(op.attrs, "spec")
    ins, out = spec.replace(" ", "").split("->")
    batched = ",".join("..." + sub for sub in ins.split(",")) + "->..." + out
    dtype = numpy_dtype(op.type.dtype)
    if not any(is_low_precision(numpy_dtype(v.type.dtype)) for v in op.operands):
        subs = ins.split(",")
        if len(subs) == 2:
            return _pairwise_einsum(subs[0], subs[1], out, ctx.mesh_axes)
        return lambda *args: np.einsum(batched, *args, optimize=True)

    def low_precision(*args: np.ndarray) -> np.ndarray:
        # numpy's einsum has no loops for ml_dtypes' floats: compute in float32
        wide = [a.astype(np.float32) if is_low_precision(a.dtype) else a for a in args]
        return np.einsum(batched, *wide, optimize=True).astype(dtype)
    return low_precision


def _pairwise_einsum(a: str, b: str, out: str, k: int) -> KernelFn:
    """The einsum ``a,b->out`` of two operands behind `k` mesh axes as one batched matmul:
    letters only one operand has and the result lacks are summed first; then the operands
    are laid out as (mesh, batch, own letters, contracted) and (mesh, batch, contracted, own
    letters), the matmul's rows and columns, and the product is put in `out`'s order."""
    batch = [c for c in out if c in a and c in b]
    contracted = [c for c in a if c in b and c not in out]
    own_a = [c for c in a if c in out and c not in b]
    own_b = [c for c in b if c in out and c not in a]
    order = batch + own_a + own_b
    to_out = tuple(range(k)) + tuple(k + order.index(c) for c in out)

    def arrange(x: np.ndarray, sub: str, other: str, rows: list[str], cols: list[str]
                ) -> np.ndarray:
        lonely = [i for i, c in enumerate(sub) if c not in out and c not in other]
        if lonely:
            x = x.sum(axis=tuple(k + i for i in lonely), dtype=x.dtype)  # as einsum: no widening
            sub = "".join(c for i, c in enumerate(sub) if i not in lonely)
        size = dict(zip(sub, x.shape[k:]))
        x = x.transpose(tuple(range(k)) + tuple(k + sub.index(c) for c in batch + rows + cols))
        return x.reshape(x.shape[:k] + tuple(size[c] for c in batch)
                         + (math.prod(size[c] for c in rows), math.prod(size[c] for c in cols)))

    def run(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        sizes = {c: n for sub, arr in ((a, x), (b, y)) for c, n in zip(sub, arr.shape[k:])}
        product = np.matmul(arrange(x, a, b, own_a, contracted),
                            arrange(y, b, a, contracted, own_b))
        shaped = product.reshape(product.shape[:k] + tuple(sizes[c] for c in order))
        return shaped.transpose(to_out)
    return run


@kernel(*reductions.REDUCTIONS.values())
def _reduction(op: Operation, ctx: ExecContext) -> KernelFn:
    kind = opdef.lookup(op.name).traits.reduction
    assert kind is not None
    reduce = _REDUCE_FUNCS[kind]
    local_axes = op.attrs["axes"]
    assert isinstance(local_axes, tuple)
    axes = tuple(ctx.mesh_axes + a for a in local_axes)
    keepdims = bool(op.attrs["keepdims"])
    return lambda x: reduce(x, axis=axes, keepdims=keepdims)


@kernel(reductions.ARGMAX, reductions.ARGMIN)
def _arg_reduction(op: Operation, ctx: ExecContext) -> KernelFn:
    reduce = np.argmax if op.name == "argmax" else np.argmin
    axis = ctx.mesh_axes + int_attr(op.attrs, "axis")
    keepdims = bool(op.attrs["keepdims"])
    return lambda x: reduce(x, axis=axis, keepdims=keepdims)


@kernel(reductions.CUMSUM)
def _cumsum(op: Operation, ctx: ExecContext) -> KernelFn:
    axis = ctx.mesh_axes + int_attr(op.attrs, "axis")
    dtype = numpy_dtype(op.type.dtype)
    return lambda x: np.cumsum(x, axis=axis, dtype=dtype)


@kernel(reductions.CUMPROD)
def _cumprod(op: Operation, ctx: ExecContext) -> KernelFn:
    axis = ctx.mesh_axes + int_attr(op.attrs, "axis")
    dtype = numpy_dtype(op.type.dtype)
    return lambda x: np.cumprod(x, axis=axis, dtype=dtype)


@kernel(reductions.SORT, reductions.ARGSORT)
def _sort(op: Operation, ctx: ExecContext) -> KernelFn:
    order = np.sort if op.name == "sort" else np.argsort
    axis = ctx.mesh_axes + int_attr(op.attrs, "axis")
    kind = str_attr(op.attrs, "kind")
    return lambda x: order(x, axis=axis, kind=kind)  # type: ignore[call-overload,arg-type]


@kernel(shape.TRANSPOSE)
def _transpose(op: Operation, ctx: ExecContext) -> KernelFn:
    k = ctx.mesh_axes
    local_perm = op.attrs["perm"]
    assert isinstance(local_perm, tuple)
    perm = tuple(range(k)) + tuple(k + p for p in local_perm)
    return lambda x: x.transpose(perm)


@kernel(shape.RESHAPE)
def _reshape(op: Operation, ctx: ExecContext) -> KernelFn:
    k = ctx.mesh_axes
    target = op.type.shape
    return lambda x: x.reshape(x.shape[:k] + target)


@kernel(shape.BROADCAST_TO)
def _broadcast_to(op: Operation, ctx: ExecContext) -> KernelFn:
    k = ctx.mesh_axes
    target = op.type.shape
    rank = op.type.rank

    def broadcast(x: np.ndarray) -> np.ndarray:
        x = align_local_rank(x, rank, k)
        return np.broadcast_to(x, x.shape[:k] + target)
    return broadcast


@kernel(shape.CONCATENATE)
def _concatenate(op: Operation, ctx: ExecContext) -> KernelFn:
    # operands agree on every sharded dim and pending reduction, so on their mesh extents
    axis = ctx.mesh_axes + int_attr(op.attrs, "axis")
    return lambda *args: np.concatenate(args, axis=axis)


@kernel(shape.REVERSE)
def _reverse(op: Operation, ctx: ExecContext) -> KernelFn:
    local_axes = op.attrs["axes"]
    assert isinstance(local_axes, tuple)
    axes = tuple(ctx.mesh_axes + a for a in local_axes)
    return lambda x: np.flip(x, axes)


@kernel(indexing.SLICE)
def _slice(op: Operation, ctx: ExecContext) -> KernelFn:
    start, stop, step = op.attrs["start"], op.attrs["stop"], op.attrs["step"]
    assert isinstance(start, tuple) and isinstance(stop, tuple) and isinstance(step, tuple)
    local = tuple(slice(b, e, s) for b, e, s in zip(start, stop, step))
    index = (slice(None),) * ctx.mesh_axes + local
    return lambda x: x[index]


@kernel(indexing.TAKE)
def _take(op: Operation, ctx: ExecContext) -> KernelFn:
    """Per device ``np.take(table, indices, axis)``, for all devices in one fancy index: the
    mesh axes are indexed by aranges that broadcast against the indices. A device holding one
    block of a sharded `axis` looks up the indices inside its block and gives the additive
    identity (-0.0 for floats, the zero that adds to any x giving x) for the others: a
    pending sum."""
    k = ctx.mesh_axes
    axis = int_attr(op.attrs, "axis")
    table_type = op.operands[0].type
    idx_rank = op.operands[1].type.rank
    lookup = _lookup(k, axis, idx_rank)
    sharding = table_type.sharding
    if sharding is None or not sharding.dims[axis]:
        size = table_type.shape[axis]

        def checked(table: np.ndarray, indices: np.ndarray) -> np.ndarray:
            _check_indices(indices, axis, size)
            return lookup(table, indices)
        return checked
    mesh_dims = sharding.dims[axis]
    local = table_type.shape[axis]
    shards = geometry.shard_count(mesh_dims, ctx.mesh)
    extent = table_type.global_shape(ctx.mesh)[axis]
    start = np.asarray(geometry.block_start(extent, shards,
                                            np.asarray(ctx.block_index(mesh_dims))))
    start = start.reshape(start.shape + (1,) * idx_rank)
    identity = reduction_identity("sum", numpy_dtype(op.type.dtype))

    def masked(table: np.ndarray, indices: np.ndarray) -> np.ndarray:
        _check_indices(indices, axis, extent)
        indices = indices.astype(np.int64, copy=False)  # (a narrow dtype would wrap around)
        shifted = np.where(indices < 0, indices + extent, indices) - start
        inside = (shifted >= 0) & (shifted < local)
        picked = lookup(table, np.where(inside, shifted, 0))
        mask = inside.reshape(inside.shape[:k] + (1,) * axis + inside.shape[k:]
                              + (1,) * (table_type.rank - axis - 1))
        return np.where(mask, picked, identity)
    return masked


def _check_indices(indices: np.ndarray, axis: int, size: int) -> None:
    """IndexError as np.take words it, for the user's axis (not the stacked array's)."""
    outside = (indices < -size) | (indices >= size)
    if outside.any():
        raise IndexError(f"index {indices[outside].flat[0]} is out of bounds for axis {axis} "
                         f"with size {size}")


def _lookup(k: int, axis: int, idx_rank: int) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    if k == 0:
        return lambda table, indices: np.take(table, indices, axis=axis)
    rows = (slice(None),) * axis
    index_dims = list(range(k, k + idx_rank))

    def take(table: np.ndarray, indices: np.ndarray) -> np.ndarray:
        mesh_index = tuple(
            np.arange(table.shape[j]).reshape((1,) * j + (-1,) + (1,) * (k - j - 1 + idx_rank))
            for j in range(k))
        # advanced indices split by slices put their broadcast dims (mesh + index dims) first
        picked = table[mesh_index + rows + (indices,)]
        return np.moveaxis(picked, index_dims, [d + axis for d in index_dims])
    return take


@kernel(indexing.SCATTER_ADD)
def _scatter_add(op: Operation, ctx: ExecContext) -> KernelFn:
    """``np.add.at`` on every device's block (a loop over the mesh positions the operands
    differ along: few on the simulated mesh)."""
    k = ctx.mesh_axes
    axis, size = op.attrs["axis"], op.attrs["size"]
    assert isinstance(axis, int) and isinstance(size, int)
    local = op.type.shape
    dtype = numpy_dtype(op.type.dtype)
    rows = (slice(None),) * axis

    def run(updates: np.ndarray, indices: np.ndarray) -> np.ndarray:
        mesh = np.broadcast_shapes(updates.shape[:k], indices.shape[:k])
        out = np.zeros(mesh + local, dtype)
        updates = np.broadcast_to(updates, mesh + updates.shape[k:])
        indices = np.broadcast_to(indices, mesh + indices.shape[k:])
        for at in np.ndindex(*mesh):
            # numpy takes slices in the index tuple; its stubs do not say so
            np.add.at(out[at], rows + (indices[at],), updates[at])  # type: ignore[arg-type]
        return out
    return run


def padding_regions(op: Operation, ctx: ExecContext) -> list[tuple[int | slice, ...]]:
    """Where a ``mask`` op writes: in block number ``r`` of each of its `axes`, past the
    block's first ``clamp(n - r * c, 0, c)`` elements, as index tuples into the stacked
    array. Only the trailing blocks of a dim have padding."""
    t = op.operands[0].type
    sharding = t.sharding
    assert sharding is not None
    axes = op.attrs["axes"]
    assert isinstance(axes, tuple)
    extents = t.global_shape(ctx.mesh)
    regions = []
    for axis in axes:
        mesh_dims = sharding.dims[axis]
        room, shards = t.shape[axis], geometry.shard_count(mesh_dims, ctx.mesh)
        for block in range(shards):
            valid = geometry.valid_size(extents[axis], shards, block)
            if valid == room:
                continue
            at = dict(zip(mesh_dims, (int(c) for c in np.unravel_index(
                block, [ctx.mesh.size(m) for m in mesh_dims]))))
            mesh_index = ctx.box.index_of(at)
            if mesh_index is None:
                continue  # no device here holds that block
            local = tuple(slice(valid, None) if d == axis else slice(None)
                          for d in range(t.rank))
            regions.append(mesh_index + local)
    return regions


def mask_fill(op: Operation) -> np.generic:
    """The value a ``mask`` op writes over padding: its fill reduction's identity."""
    t = op.operands[0].type
    return reduction_identity(ReduceOp.parse(op.attrs["fill"]), numpy_dtype(t.dtype))


@kernel(padding.MASK)
def _mask(op: Operation, ctx: ExecContext) -> KernelFn:
    """Write the fill reduction's identity over the padding (`padding_regions`): a copy plus
    a few slice assignments (cheaper than a select over the whole array)."""
    regions = padding_regions(op, ctx)
    identity = mask_fill(op)

    def run(x: np.ndarray) -> np.ndarray:
        out = np.array(x)
        for region in regions:
            out[region] = identity
        return out
    return run


@kernel(sources.FULL)
def _full(op: Operation, ctx: ExecContext) -> KernelFn:
    scalar = np.asarray(op.attrs["value"], dtype=numpy_dtype(op.type.dtype))
    out = np.broadcast_to(scalar, (1,) * ctx.mesh_axes + op.type.shape)  # a view, no memory
    sharding = op.type.sharding
    if sharding is not None and sharding.partial:
        out = ctx.spread_partial(out, sharding)
    return lambda: out


@kernel(sources.IOTA)
def _iota(op: Operation, ctx: ExecContext) -> KernelFn:
    """Each device counts from its block's offset along the iota dimension."""
    k = ctx.mesh_axes
    local = op.type.shape
    d = int_attr(op.attrs, "dimension")
    dtype = numpy_dtype(op.type.dtype)
    sharding = op.type.sharding
    along = (1,) * k + tuple(s if i == d else 1 for i, s in enumerate(local))
    counts = np.arange(local[d], dtype=dtype).reshape(along)
    if sharding is not None and sharding.dims[d]:
        shards = geometry.shard_count(sharding.dims[d], ctx.mesh)
        extent = op.type.global_shape(ctx.mesh)[d]
        block = np.asarray(ctx.block_index(sharding.dims[d]))
        offsets = np.asarray(geometry.block_start(extent, shards, block)).astype(dtype)
        counts = offsets.reshape(offsets.shape + (1,) * len(local)) + counts
    out = np.broadcast_to(counts, counts.shape[:k] + local)
    if sharding is not None and sharding.partial:
        out = ctx.spread_partial(out, sharding)
    return lambda: out


@kernel(sources.CONSTANT)
def _constant(op: Operation, ctx: ExecContext) -> KernelFn:
    value = op.attrs["value"]
    assert isinstance(value, np.ndarray)
    sharding = op.type.sharding
    out = value if sharding is None else ctx.distribute(value, sharding)
    return lambda: out


def _collective(op: Operation, ctx: ExecContext) -> KernelFn:
    src = op.operands[0].type.sharding
    assert src is not None, f"{op.name} operand has no sharding in a localized module"
    run = getattr(ctx.comm, op.name)
    attrs: dict[str, object] = dict(op.attrs)
    definition = opdef.lookup(op.name).collective
    assert definition is not None
    if definition.reshapes:
        attrs["block"] = op.type.shape
    return lambda x: run(x, src, **attrs)


for _definition in opdef.collectives():
    kernel(_definition)(_collective)


_GLOBAL = StackedContext(MeshShape(()))
"""A mesh without dims: arrays are global values."""


def evaluate(op: Operation, args: Sequence[np.ndarray]) -> np.ndarray:
    """The value of `op`'s result on global operand values, with its kernel."""
    build = NUMPY_KERNELS.get(op.name)
    assert build is not None, f"no numpy kernel for {op.name}"
    return build(op, _GLOBAL)(*args)
