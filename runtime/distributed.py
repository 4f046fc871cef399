"""The distributed backend: each process runs its own devices' part of a program, and the
collectives go over torch.distributed (gloo on CPU).

Every process runs the same localized module. A process holds its devices (its `Box`) in
the stacked form cut to the box (`box`), so its kernels are the numpy backend's, run once
over all its devices, exactly as on the simulated mesh. A collective over mesh dims ``G``:

- is local when the box spans ``G`` whole (every group lies in this process): the simulated
  mesh's collective on the box;
- is one torch collective when the box holds one coordinate along each dim of ``G``: the
  processes whose boxes differ only along ``G`` form a process group, ordered by client id,
  which is row-major over the ``G`` coordinates; the process's devices along the other dims
  ride along as a batch axis, so one ``all_reduce`` / ``all_gather_single`` /
  ``reduce_scatter_single`` / ``all_to_all_single`` serves them all;
- otherwise (a box holding part of ``G``) gathers the group's boxes, runs the simulated
  collective on them and keeps its own part: correct, but it moves the whole operand.

One process group per set of mesh dims and mesh, made the first time it is needed. Every
process makes the groups in the same order because every process runs the same programs in
the same order (a mismatch is caught before running: `_check_same_plan`).
torch is imported with this module only.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

import numpy as np
import torch
import torch.distributed as dist

from dtensor_compiler.errors import DTensorError, MultiClientError, NotLocalError, first_line
from dtensor_compiler.ir import geometry
from dtensor_compiler.ir.core import Module, Operation
from dtensor_compiler.ir.printer import print_module
from dtensor_compiler.ir.sharding import MeshShape, ReduceOp, Sharding
from dtensor_compiler.ir.types import TensorType, is_floating, is_low_precision, numpy_dtype
from dtensor_compiler.runtime import checkpoint_kernels, clients
from dtensor_compiler.runtime.backends import Backend, Storage
from dtensor_compiler.runtime.box import Box
from dtensor_compiler.runtime.executor import ArrayType, Conform, ExecutionError, Program
from dtensor_compiler.runtime.kernels_numpy import NUMPY_KERNELS
from dtensor_compiler.runtime.stacked import (
    check_stacked,
    copy_index,
    expected_stacked_shape,
    from_device_shards,
    from_stacked,
    to_stacked,
    trim_to,
)
from dtensor_compiler.runtime.stacked_comm import (
    StackedCommunicator,
    gather_from_mesh,
    scatter_into_mesh,
)

_TORCH_REDUCE = {ReduceOp.SUM: dist.ReduceOp.SUM, ReduceOp.MAX: dist.ReduceOp.MAX,
                 ReduceOp.MIN: dist.ReduceOp.MIN, ReduceOp.PROD: dist.ReduceOp.PRODUCT}
_BOOL_REDUCE = {ReduceOp.SUM: dist.ReduceOp.MAX, ReduceOp.MAX: dist.ReduceOp.MAX,
                ReduceOp.MIN: dist.ReduceOp.MIN, ReduceOp.PROD: dist.ReduceOp.MIN}
"""numpy's sum of bools is `or`, its product `and`."""


def _this_box(mesh: MeshShape) -> Box:
    current = clients.current()
    if current is None:
        return Box.of_mesh(mesh)
    return current.box(mesh)


# -- torch tensors -----------------------------------------------------------------------------


_MOVED_AS = {np.dtype(np.int16): np.float16, np.dtype(np.uint16): np.float16,
             np.dtype(np.uint32): np.int32, np.dtype(np.uint64): np.int64}
"""gloo has no collectives of these dtypes: to move them (not reduce), their bits travel
as a dtype of the same width."""
_REDUCED = frozenset(np.dtype(t) for t in (np.bool_, np.int8, np.uint8, np.int32, np.int64,
                                           np.float16, np.float32, np.float64))
"""Dtypes gloo reduces (ml_dtypes' floats travel as float32, complex ones only sum)."""


def _to_torch(x: np.ndarray) -> torch.Tensor:
    """A new contiguous tensor of `x` to reduce (ml_dtypes' floats as float32: torch
    collectives have no float8 sum)."""
    array = np.array(x, order="C")
    if is_low_precision(array.dtype):
        array = array.astype(np.float32)
    return torch.from_numpy(array)


def _to_numpy(t: torch.Tensor, dtype: np.dtype) -> np.ndarray:
    out = t.numpy()
    return out if out.dtype == dtype else out.astype(dtype)


def _moving(x: np.ndarray) -> torch.Tensor:
    """A new contiguous tensor of `x`'s bits, to move (not reduce)."""
    array = np.array(x, order="C")
    if array.dtype in _MOVED_AS:
        array = array.view(_MOVED_AS[array.dtype])
    elif is_low_precision(array.dtype):
        array = array.view(np.uint8 if array.dtype.itemsize == 1 else np.float16)
    return torch.from_numpy(array)


def _moved(t: torch.Tensor, dtype: np.dtype) -> np.ndarray:
    """The array `_moving` made `t` of, back in `dtype`."""
    out = t.numpy()
    return out if out.dtype == dtype else out.view(dtype)


def _reducible(dtype: np.dtype, op: ReduceOp) -> bool:
    """Whether gloo reduces `dtype` with `op` as numpy does."""
    if dtype.kind == "c":
        return op == ReduceOp.SUM
    return dtype in _REDUCED or is_low_precision(dtype)


def _all_gather(t: torch.Tensor, group: Any, size: int) -> torch.Tensor:
    """Every group member's `t`, stacked along a new leading axis in member order."""
    out = torch.empty((size,) + tuple(t.shape), dtype=t.dtype)
    dist.all_gather_single(out, t.reshape((1,) + tuple(t.shape)), group=group)
    return out


def forget_process_groups() -> None:
    """Drop the cached process groups (their process group is gone: shutdown)."""
    _Groups._made.clear()


class _Groups:
    """The process groups of one mesh: per set of mesh dims, the clients whose boxes differ
    only along those dims."""

    _made: dict[tuple[MeshShape, tuple[str, ...]], tuple[Any, list[int]]] = {}
    """Process-wide, so each group is made once."""

    def __init__(self, mesh: MeshShape) -> None:
        self.mesh = mesh
        current = clients.current()
        if current is None:
            raise DTensorError("the distributed backend needs initialize_multi_client() first")
        self.clients = current
        self.boxes = [current.box(mesh, c) for c in range(current.num_clients)]

    def group(self, mesh_dims: Sequence[str]) -> tuple[Any, list[int]]:
        """This client's process group over `mesh_dims`, and its members (client ids,
        ascending: row-major over the mesh coordinates of `mesh_dims`)."""
        key = (self.mesh, tuple(sorted(mesh_dims, key=self.mesh.index)))
        if key not in self._made:
            mine: tuple[Any, list[int]] | None = None
            for ranks in self._classes(key[1]):  # the same order on every client
                group = dist.new_group(ranks) if len(ranks) > 1 else None
                if self.clients.client_id in ranks:
                    mine = (group, ranks)
            assert mine is not None
            self._made[key] = mine
        return self._made[key]

    def members(self, mesh_dims: Sequence[str]) -> list[int]:
        """The clients of this client's group over `mesh_dims` (without making it)."""
        return next(r for r in self._classes(mesh_dims) if self.clients.client_id in r)

    def _classes(self, mesh_dims: Sequence[str]) -> list[list[int]]:
        """The clients, grouped by their boxes' starts along the mesh dims not in
        `mesh_dims`."""
        classes: dict[tuple[int, ...], list[int]] = {}
        for c, box in enumerate(self.boxes):
            rest = tuple(s for m, s in zip(self.mesh.names, box.start) if m not in mesh_dims)
            classes.setdefault(rest, []).append(c)
        return list(classes.values())


_Collective = TypeVar("_Collective", bound=Callable[..., np.ndarray])


def _names_failures(method: _Collective) -> _Collective:
    """`method` (a collective of `TorchCommunicator`), with what torch raises while it talks
    to the other clients (a peer that crashed closes the connection; one that hangs runs
    into the process group's timeout, the join timeout) raised as a MultiClientError that
    names the collective, its mesh dims and the clients of the group."""
    @functools.wraps(method)
    def run(self: TorchCommunicator, x: np.ndarray, src: Sharding,
            mesh_dims: tuple[str, ...], *args: Any, **kwargs: Any) -> np.ndarray:
        try:
            out: np.ndarray = method(self, x, src, mesh_dims, *args, **kwargs)
            return out
        except RuntimeError as e:
            if isinstance(e, DTensorError) or self._groups is None:
                raise
            me = self._groups.clients.client_id
            raise MultiClientError(
                f"{method.__name__} over mesh dims {list(mesh_dims)} failed on client {me}, "
                f"in the group of clients {self._groups.members(mesh_dims)}: "
                f"{first_line(e)}") from e
    return cast(_Collective, run)


class TorchCommunicator:
    """The collectives of one client's box (implements `executor.Communicator`)."""

    def __init__(self, mesh: MeshShape, box: Box) -> None:
        self.mesh = mesh
        self.box = box
        self.local = StackedCommunicator(box.submesh)
        self._groups: _Groups | None = None

    def _group(self, mesh_dims: Sequence[str]) -> tuple[Any, list[int]]:
        if self._groups is None:
            self._groups = _Groups(self.mesh)
        return self._groups.group(mesh_dims)

    def _route(self, mesh_dims: Sequence[str]) -> str:
        if self.box.whole(mesh_dims):
            return "local"
        if all(self.box.extent[self.mesh.index(m)] == 1 for m in mesh_dims):
            return "remote"
        return "mixed"

    def _union(self, mesh_dims: Sequence[str]) -> MeshShape:
        """The box widened to the whole mesh along `mesh_dims`."""
        return MeshShape(tuple((m, self.mesh.size(m) if m in mesh_dims else e)
                               for m, e in zip(self.mesh.names, self.box.extent)))

    def _axes(self, mesh_dims: Sequence[str]) -> list[int]:
        return sorted(self.mesh.index(m) for m in mesh_dims)

    def _flatten(self, x: np.ndarray, mesh_dims: Sequence[str]) -> np.ndarray:
        """`x`, whose axes along `mesh_dims` span the whole mesh, with those axes moved to
        one leading axis in mesh order (a group member's position), contiguous."""
        axes = self._axes(mesh_dims)
        moved = np.moveaxis(x, axes, list(range(len(axes))))
        return np.ascontiguousarray(moved.reshape((-1,) + moved.shape[len(axes):]))

    def _unflatten(self, x: np.ndarray, mesh_dims: Sequence[str]) -> np.ndarray:
        """Inverse of `_flatten`: the leading group axis back onto the mesh axes of
        `mesh_dims`."""
        axes = self._axes(mesh_dims)
        sizes = [self.mesh.sizes[j] for j in axes]
        return np.moveaxis(x.reshape(sizes + list(x.shape[1:])), list(range(len(axes))), axes)

    def _gather_group(self, x: np.ndarray, src: Sharding, mesh_dims: Sequence[str]
                      ) -> np.ndarray:
        """The group's boxes of `x` (laid out as `src`) put together: its axes along those
        of `mesh_dims` it differs along span the whole mesh."""
        group, ranks = self._group(mesh_dims)
        out = _all_gather(_moving(x), group, len(ranks))
        used = src.used_mesh_dims()
        shape = list(x.shape)
        for m in mesh_dims:
            if m in used:
                shape[self.mesh.index(m)] = self.mesh.size(m)
        union = np.empty(shape, dtype=x.dtype)
        assert self._groups is not None
        for piece, client in zip(_moved(out, x.dtype), ranks):
            start = self._groups.boxes[client].start
            union[tuple(slice(start[j], start[j] + n) if n < shape[j] else slice(None)
                        for j, n in enumerate(x.shape))] = piece
        return union

    def _own_part(self, y: np.ndarray, mesh_dims: Sequence[str]) -> np.ndarray:
        """This box's part of `y`, whose axes along `mesh_dims` may span the whole mesh."""
        return y[tuple(
            slice(s, s + e) if m in mesh_dims and y.shape[j] == self.mesh.size(m) > e
            else slice(None)
            for j, (m, s, e) in enumerate(zip(self.mesh.names, self.box.start,
                                              self.box.extent)))]

    # -- the collectives ------------------------------------------------------------------------
    @_names_failures
    def all_reduce(self, x: np.ndarray, src: Sharding, mesh_dims: tuple[str, ...],
                   op: ReduceOp) -> np.ndarray:
        route = self._route(mesh_dims)
        if route == "local":
            return self.local.all_reduce(x, src, mesh_dims, op)
        if route == "mixed" or not _reducible(x.dtype, op):
            union = self._gather_group(x, src, mesh_dims)
            return StackedCommunicator(self._union(mesh_dims)).all_reduce(
                union, src, mesh_dims, op)
        group, _ = self._group(mesh_dims)
        t = _to_torch(x)
        dist.all_reduce(t, op=(_BOOL_REDUCE if x.dtype == np.bool_ else _TORCH_REDUCE)[op],
                        group=group)
        return self._with_nans(_to_numpy(t, x.dtype), x, op, group)

    def _with_nans(self, reduced: np.ndarray, x: np.ndarray, op: ReduceOp, group: Any,
                   scatter: Any = None) -> np.ndarray:
        """numpy's max and min of floats are NaN where any element is; gloo's depend on the
        order: reduce where the NaNs are too (`scatter` cuts `x`'s mask like the values)."""
        if op not in (ReduceOp.MAX, ReduceOp.MIN) or not is_floating(x.dtype):
            return reduced
        nan = np.isnan(x).astype(np.uint8)
        mask = torch.from_numpy(np.ascontiguousarray(nan if scatter is None else scatter(nan)))
        if scatter is None:
            dist.all_reduce(mask, op=dist.ReduceOp.MAX, group=group)
            where = mask.numpy().astype(bool)
        else:
            mine = torch.empty((1,) + tuple(mask.shape[1:]), dtype=mask.dtype)
            dist.reduce_scatter_single(mine, mask, op=dist.ReduceOp.MAX, group=group)
            where = mine[0].numpy().astype(bool)
        if where.any():
            reduced = np.where(where, np.array(np.nan, dtype=reduced.dtype), reduced)
        return reduced

    @_names_failures
    def reduce_scatter(self, x: np.ndarray, src: Sharding, mesh_dims: tuple[str, ...],
                       op: ReduceOp, axis: int, block: tuple[int, ...]) -> np.ndarray:
        route = self._route(mesh_dims)
        if route == "local":
            return self.local.reduce_scatter(x, src, mesh_dims, op, axis, block)
        union_mesh = self._union(mesh_dims)
        if route == "mixed" or not _reducible(x.dtype, op):
            union = self._gather_group(x, src, mesh_dims)
            scattered = StackedCommunicator(union_mesh).reduce_scatter(
                union, src, mesh_dims, op, axis, block)
            return self._own_part(scattered, mesh_dims)
        if x.dtype == np.bool_:  # gloo has no boolean reduce_scatter: reduce whole, cut
            reduced = self.all_reduce(x, src, mesh_dims, op)
            return self.local_slice(reduced, Sharding(src.dims), mesh_dims, axis, block)
        group, _ = self._group(mesh_dims)

        def chunks(v: np.ndarray) -> np.ndarray:
            return self._flatten(scatter_into_mesh(v, mesh_dims, axis, union_mesh,
                                                   block[axis]), mesh_dims)
        t = _to_torch(chunks(x))
        mine = torch.empty((1,) + tuple(t.shape[1:]), dtype=t.dtype)
        dist.reduce_scatter_single(mine, t, op=_TORCH_REDUCE[op], group=group)
        reduced = self._with_nans(_to_numpy(mine[0], x.dtype), x, op, group, chunks)
        return np.expand_dims(reduced, self._axes(mesh_dims))

    @_names_failures
    def all_gather(self, x: np.ndarray, src: Sharding, mesh_dims: tuple[str, ...], axis: int,
                   block: tuple[int, ...]) -> np.ndarray:
        route = self._route(mesh_dims)
        if route == "local":
            return self.local.all_gather(x, src, mesh_dims, axis, block)
        if route == "mixed":
            union = self._gather_group(x, src, mesh_dims)
        else:
            group, ranks = self._group(mesh_dims)
            out = _all_gather(_moving(np.squeeze(x, tuple(self._axes(mesh_dims)))), group,
                              len(ranks))
            union = self._unflatten(_moved(out, x.dtype), mesh_dims)
        return gather_from_mesh(union, mesh_dims, axis, self._union(mesh_dims), block[axis])

    @_names_failures
    def all_to_all(self, x: np.ndarray, src: Sharding, mesh_dims: tuple[str, ...],
                   split_axis: int, concat_axis: int, block: tuple[int, ...]) -> np.ndarray:
        route = self._route(mesh_dims)
        if route == "local":
            return self.local.all_to_all(x, src, mesh_dims, split_axis, concat_axis, block)
        if split_axis == concat_axis:
            return x
        union_mesh = self._union(mesh_dims)
        if route == "mixed":
            union = self._gather_group(x, src, mesh_dims)
            moved = StackedCommunicator(union_mesh).all_to_all(union, src, mesh_dims,
                                                               split_axis, concat_axis, block)
            return self._own_part(moved, mesh_dims)
        group, _ = self._group(mesh_dims)
        t = _moving(self._flatten(scatter_into_mesh(x, mesh_dims, split_axis, union_mesh,
                                                    block[split_axis]), mesh_dims))
        out = torch.empty_like(t)
        dist.all_to_all_single(out, t, group=group)
        received = self._unflatten(_moved(out, x.dtype), mesh_dims)
        return gather_from_mesh(received, mesh_dims, concat_axis, union_mesh,
                                block[concat_axis])

    def local_slice(self, x: np.ndarray, src: Sharding, mesh_dims: tuple[str, ...], axis: int,
                    block: tuple[int, ...]) -> np.ndarray:
        if self._route(mesh_dims) == "local":
            return self.local.local_slice(x, src, mesh_dims, axis, block)
        whole = scatter_into_mesh(x, mesh_dims, axis, self._union(mesh_dims), block[axis])
        return self._own_part(whole, mesh_dims)

    def make_partial(self, x: np.ndarray, src: Sharding, mesh_dims: tuple[str, ...],
                     op: ReduceOp) -> np.ndarray:
        return self.box.place_partial(x, Sharding(src.dims, tuple((m, op) for m in mesh_dims)))


class BoxContext:
    """Implements `executor.ExecContext` for one client's box of the mesh."""

    def __init__(self, mesh: MeshShape, box: Box) -> None:
        self.mesh = mesh
        self.mesh_axes = len(mesh.dims)
        self.box = box
        self.comm = TorchCommunicator(mesh, box)

    def block_index(self, mesh_dims: Sequence[str]) -> np.ndarray:
        return self.box.block_index(mesh_dims)

    def spread_partial(self, x: np.ndarray, sharding: Sharding) -> np.ndarray:
        return self.box.place_partial(x, sharding)

    def distribute(self, value: np.ndarray, sharding: Sharding) -> np.ndarray:
        return np.ascontiguousarray(self.box.cut(to_stacked(value, sharding, self.mesh)))

    def barrier(self, key: str, failure: str | None) -> dict[int, str]:
        current = clients.current()
        if current is None or current.store is None:
            return {}
        said = clients.gather(current.store, key, "failed: " + failure if failure else "ok",
                              current.client_id, current.num_clients, current.wait_s)
        return {c: text.decode()[len("failed: "):] for c, text in enumerate(said)
                if c != current.client_id and text != b"ok"}


# -- storage -----------------------------------------------------------------------------------


class BoxStorage:
    """A distributed value as one client holds it: the stacked array over its box
    (implements `backends.Storage`). The array is read-only."""

    __slots__ = ("stacked", "sharding", "mesh", "shape", "box")

    def __init__(self, stacked: np.ndarray, sharding: Sharding, mesh: MeshShape,
                 shape: Sequence[int], box: Box | None = None) -> None:
        self.box = box or _this_box(mesh)
        check_stacked(stacked, sharding, self.box.submesh)
        if stacked.flags.writeable:
            stacked = stacked.view()
            stacked.flags.writeable = False
        self.stacked = stacked
        self.sharding = sharding
        self.mesh = mesh
        self.shape = tuple(shape)

    @classmethod
    def from_global(cls, value: np.ndarray, sharding: Sharding, mesh: MeshShape
                    ) -> BoxStorage:
        """This client's blocks of a global array laid out as `sharding` (a copy)."""
        box = _this_box(mesh)
        return cls(np.array(box.cut(to_stacked(value, sharding, mesh))), sharding, mesh,
                   np.shape(value), box)

    @classmethod
    def from_device_shards(cls, shards: Sequence[np.ndarray], sharding: Sharding,
                           mesh: MeshShape, shape: Sequence[int]) -> BoxStorage:
        """From the valid part of each of this client's devices' blocks, in device-id
        order (ValueError naming the device whose block is wrong, or whose replicated copy
        differs)."""
        box = _this_box(mesh)
        return cls(from_device_shards(shards, sharding, mesh, shape, box.devices, box.extent),
                   sharding, mesh, shape, box)

    @property
    def dtype(self) -> np.dtype:
        return self.stacked.dtype

    @property
    def local_shape(self) -> tuple[int, ...]:
        return self.stacked.shape[len(self.mesh.dims):]

    def alias(self) -> BoxStorage:
        return BoxStorage(self.stacked.view(), self.sharding, self.mesh, self.shape, self.box)

    def is_local(self) -> bool:
        """Whether this client holds the whole value (every mesh dim it differs along
        lies whole in the box)."""
        return self.box.whole(sorted(self.sharding.used_mesh_dims()))

    def to_global(self) -> np.ndarray:
        """The global value as a new array; NotLocalError when other clients hold parts."""
        if not self.is_local():
            spread = [m for m in self.sharding.used_mesh_dims() if not self.box.whole([m])]
            raise NotLocalError(
                f"this {list(self.shape)} value laid out as {self.sharding.text()} is spread "
                f"over other clients along mesh dims {sorted(spread)}; gather it first: "
                "dtc.relayout(x, dtc.Layout.replicated(x.layout.mesh, x.ndim)), or read this "
                "client's blocks with dtc.unpack(x)")
        return np.array(from_stacked(self.stacked, self.sharding, self.box.submesh,
                                     self.shape))

    def device_shard(self, device_id: int) -> np.ndarray:
        """The valid part of one of this client's devices' block (a copy)."""
        local = self.box.coords_of(device_id)
        if local is None:
            raise NotLocalError(f"device {device_id} belongs to another client")
        coords = tuple(int(c) for c in np.unravel_index(device_id, self.mesh.sizes))
        block = self.stacked[copy_index(local, self.stacked.shape)]
        _, valid = geometry.device_block(self.shape, self.sharding.dims, self.mesh, coords)
        return np.array(trim_to(block, valid))


# -- the executor ------------------------------------------------------------------------------


class DistributedExecutor:
    """Runs a localized module on this client's `BoxStorage` values (implements
    `backends.Executor`)."""

    def __init__(self, module: Module, donated: frozenset[int] = frozenset()) -> None:
        mesh = module.mesh
        self.mesh = mesh
        self.box = _this_box(mesh)
        submesh = self.box.submesh
        self.program = Program(module, NUMPY_KERNELS, BoxContext(mesh, self.box),
                               _array_type(submesh), _conformer(submesh), frozenset())
        self.results = []
        for value in module.main.results:
            assert value.type.sharding is not None
            self.results.append((value.type.sharding, value.type.global_shape(mesh)))
        self._lock = checkpoint_kernels.program_lock(module)
        self.clients = clients.current()
        if self.clients is not None and self.clients.store is not None:
            _check_same_plan(module, self.clients)

    def run(self, inputs: Sequence[Storage]) -> list[Storage]:
        if self.clients is not None and self.clients.heartbeat is not None:
            self.clients.heartbeat.progress += 1
        arrays = []
        for x in inputs:
            if not isinstance(x, BoxStorage):
                raise ExecutionError("the distributed backend runs on its own storage; make "
                                     "inputs after initialize_multi_client()")
            arrays.append(x.stacked)
        with np.errstate(all="ignore"), self._lock:
            outs = self.program.run(arrays)
        return [BoxStorage(out, sharding, self.mesh, shape, self.box)
                for out, (sharding, shape) in zip(outs, self.results)]


_PLANS = itertools.count()
"""Programs this process has made executors for, to key their plan hashes."""


def _check_same_plan(module: Module, current: clients.Clients) -> None:
    """Every client must run the same program (the same compiled function on the same
    argument layouts, in the same order): otherwise their collectives would not pair up
    and they would wait on each other forever. The programs' hashes are compared once, when
    the executor is made (a client still busy elsewhere is waited for as long as its
    heartbeat says it lives); MultiClientError names the clients whose program differs."""
    digest = hashlib.sha256(print_module(module).encode()).hexdigest()[:16]
    key = f"plan {next(_PLANS)}"
    hashes = [h.decode() for h in clients.gather(current.store, key, digest,
                                                 current.client_id, current.num_clients,
                                                 current.wait_s)]
    differ = [c for c, h in enumerate(hashes) if h != hashes[0]]
    if differ:
        raise MultiClientError(
            f"{key}: clients {', '.join(map(str, differ))} planned another program than "
            f"client 0 (plan hash {hashes[differ[0]]} against {hashes[0]}; this client's: "
            f"{digest}): every client must call the same compiled functions with the same "
            "argument layouts and shapes, in the same order")


def _array_type(submesh: MeshShape) -> ArrayType:
    def array_type(t: TensorType) -> tuple[tuple[int, ...], np.dtype]:
        assert t.sharding is not None
        return expected_stacked_shape(t.shape, t.sharding, submesh), numpy_dtype(t.dtype)
    return array_type


def _conformer(submesh: MeshShape) -> Conform:
    def conform(out: np.ndarray, type: TensorType, op: Operation) -> np.ndarray:
        sharding = type.sharding
        assert sharding is not None
        expected = expected_stacked_shape(type.shape, sharding, submesh)
        if out.shape != expected:
            k = len(submesh.dims)
            if out.ndim != len(expected) or out.shape[k:] != expected[k:] or any(
                    x not in (1, e) for x, e in zip(out.shape[:k], expected[:k])):
                raise ExecutionError(f"{op.name} produced stacked shape {list(out.shape)} on "
                                     f"this client; {type.text()} needs {list(expected)}")
            out = np.broadcast_to(out, expected)
        return out
    return conform


BACKEND = Backend(name="distributed", kernels=NUMPY_KERNELS, place=BoxStorage.from_global,
                  from_device_shards=BoxStorage.from_device_shards,
                  executor=lambda module, donated: DistributedExecutor(module, donated))
