"""The eager API on the simulated mesh: making, inspecting and moving distributed values.

`pack` / `unpack` convert between per-device components and a `DTensor`; `copy_to_mesh` lays a
global numpy array out on a mesh; `relayout` changes a DTensor's layout by running a one-op
compiled program (see `eager`), or, on a value being traced inside a compiled function,
records a relayout op in the IR. `default_mesh` sets the mesh that compiled
functions and `call_with_layout` use when nothing else names one.

Mirrors the reference system's functions of the same names, with these differences: scalar
components are checked instead of crashing, and `pack` verifies that replicated copies agree.
On a multi-client mesh (`multi_client`) the components are this client's devices', values
live on the ``distributed`` backend, and a value other clients hold parts of must be gathered
explicitly (`relayout`) before ``np.asarray`` reads it whole.
"""

from __future__ import annotations

import contextlib
import itertools
import json
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from typing import overload

import numpy as np

from dtensor_compiler import tracing
from dtensor_compiler.dtensor import DEVICE_NAME, DistributedValue, DTensor
from dtensor_compiler.eager import place, relayout_storage
from dtensor_compiler.errors import (
    DTensorError,
    EagerOnlyError,
    LayoutError,
    MeshError,
    TraceError,
)
from dtensor_compiler.ir.types import dtype_name, native_array
from dtensor_compiler.layout import MATCH, Layout, Spec
from dtensor_compiler.mesh import Mesh
from dtensor_compiler.runtime import clients
from dtensor_compiler.runtime.backends import default_backend, get_backend
from dtensor_compiler.tracing import TracedArray
from dtensor_compiler.tracing.location import user_location

_DEFAULT_MESH: ContextVar[Mesh | None] = ContextVar("dtc_default_mesh", default=None)


# -- meshes -------------------------------------------------------------------------------------


@contextlib.contextmanager
def default_mesh(mesh: Mesh) -> Iterator[Mesh]:
    """Within the block, `get_default_mesh()` is `mesh`."""
    if not isinstance(mesh, Mesh):
        raise MeshError(f"Expect `mesh` to be `Mesh`, got {type(mesh).__name__}")
    token = _DEFAULT_MESH.set(mesh)
    try:
        yield mesh
    finally:
        _DEFAULT_MESH.reset(token)


run_on = default_mesh


def get_default_mesh() -> Mesh | None:
    """The mesh of the innermost `default_mesh` block, or None outside every such block."""
    return _DEFAULT_MESH.get()


def device_name() -> str:
    """The name of the (single, simulated) DTensor device."""
    return DEVICE_NAME


# -- inspecting ---------------------------------------------------------------------------------


def is_dtensor(tensor: object) -> bool:
    """True for a `DTensor` or a `DVariable`, and inside a compiled function for every traced
    array (all of them are distributed values on the mesh)."""
    return isinstance(tensor, DistributedValue) or tracing.is_traced(tensor)


def _outside_trace(what: str, *values: object) -> None:
    if any(tracing.is_traced(v) for v in values):
        raise EagerOnlyError(f"{what} must be called outside a compiled function: it works on "
                             "a DTensor's per-device components, which a traced array does "
                             "not have yet")


def fetch_layout(tensor: object) -> Layout | None:
    """The layout of a DTensor or DVariable; None for a Python value that is not an array
    (as the reference); TypeError for an array that is not a DTensor."""
    _outside_trace("fetch_layout", tensor)
    if isinstance(tensor, DistributedValue):
        return tensor.layout
    if not isinstance(tensor, (np.ndarray, np.generic)):
        return None
    raise TypeError(f"fetch_layout expects a DTensor or DVariable, got "
                    f"{type(tensor).__name__}")


def check_layout(tensor: DistributedValue, layout: Layout) -> None:
    """Raise LayoutError unless `tensor` has exactly `layout`."""
    actual = fetch_layout(tensor)
    if actual is None:
        raise TypeError(f"check_layout expects a DTensor or DVariable, got "
                        f"{type(tensor).__name__}")
    if actual != layout:
        raise LayoutError(f"expected layout {layout.short_text()} on "
                          f"{layout.mesh.short_text()}, the tensor has "
                          f"{actual.short_text()} on {actual.mesh.short_text()}")


# -- per-device components ----------------------------------------------------------------------


def backend_for(mesh: Mesh) -> str:
    """The backend values and programs on `mesh` run on: the simulated mesh (``numpy``), or
    this client's devices of it (``distributed``)."""
    return default_backend(mesh.num_local_devices(), mesh.size)


def _component(value: object, device: str, rank: int) -> np.ndarray:
    if isinstance(value, DistributedValue):
        raise TypeError(f"the component for {device} is a DTensor; pack takes local arrays")
    array = native_array(value)
    try:
        dtype_name(array.dtype)
    except TypeError as e:
        raise TypeError(f"the component for {device}: {e}") from None
    if array.ndim != rank:
        kind = "a scalar" if array.ndim == 0 else f"of rank {array.ndim}"
        raise LayoutError(f"the component for {device} is {kind}, but the layout has rank "
                          f"{rank}; every component has the rank of the global tensor")
    return array


def pack(tensors: Sequence[object], layout: Layout) -> DTensor:
    """A DTensor from one local component per device of `layout.mesh.local_devices()` (on a
    multi-client mesh, this client's devices: every client calls it, and they tell each
    other their components' shapes to agree on the global one)."""
    _outside_trace("pack", *(tensors if isinstance(tensors, (list, tuple)) else ()))
    mesh = layout.mesh
    devices = mesh.local_devices()
    if not isinstance(tensors, (list, tuple)):
        raise TypeError(f"pack expects a list of components, got {type(tensors).__name__}")
    if tensors and not isinstance(tensors[0], DistributedValue):
        layout = layout.for_rank(native_array(tensors[0]).ndim)
    sharding = layout.sharding
    if len(tensors) != len(devices):
        raise LayoutError(f"pack got {len(tensors)} components for the {len(devices)} devices "
                          f"of {mesh.short_text()}")
    arrays = [_component(t, d, layout.rank) for t, d in zip(tensors, devices)]
    first = arrays[0]
    for array, device in zip(arrays, devices):
        if array.dtype != first.dtype:
            raise TypeError(f"the component for {device} has dtype {array.dtype}, the one for "
                            f"{devices[0]} has {first.dtype}")
    ids = mesh.local_device_ids()
    shapes = [a.shape for a in arrays]
    if len(ids) < mesh.size:  # other clients hold the other blocks: ask them their shapes
        shapes = _every_clients_shapes(shapes)
    shape = _global_shape_of_blocks(shapes, layout)
    blocks = layout.block_shapes(shape)
    for array, device, block in zip(arrays, devices, (blocks[i] for i in ids)):
        if array.shape != block:
            raise LayoutError(f"the component for {device} has shape {list(array.shape)}, but "
                              f"its block of the {list(shape)} tensor laid out as "
                              f"{layout.short_text()} has shape {list(block)}")
    try:
        storage = get_backend(backend_for(mesh)).from_device_shards(arrays, sharding,
                                                                 mesh.mesh_shape(), shape)
    except ValueError as e:
        raise LayoutError(f"pack onto {layout.short_text()}: {e} (devices are numbered by "
                          "their position in mesh.local_devices())") from None
    return DTensor(storage, layout, shape)


def _global_shape_of_blocks(shapes: Sequence[tuple[int, ...]], layout: Layout
                            ) -> tuple[int, ...]:
    """The global shape the components of `pack` (of these shapes, one per device in
    device-id order) add up to: per dim, the sum of the extents of its distinct blocks (one
    device's component stands for each block number)."""
    blocks = layout.offset_to_shard()
    shape = []
    for i in range(layout.rank):
        sizes: dict[int, int] = {}
        for component, numbers in zip(shapes, blocks):
            sizes.setdefault(numbers[i], component[i])
        shape.append(sum(sizes.values()))
    return tuple(shape)


_PACKS = itertools.count()
"""`pack` calls on multi-client meshes in this process (every client makes the same ones)."""


def _every_clients_shapes(mine: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
    """Every device's component shape, in device-id order, from every client's `mine`."""
    current = clients.current()
    if current is None or current.store is None:
        raise DTensorError("pack onto a multi-client mesh needs initialize_multi_client()")
    every = clients.gather(current.store, f"pack {next(_PACKS)}", json.dumps(mine),
                           current.client_id, current.num_clients, current.wait_s)
    return [tuple(s) for text in every for s in json.loads(text)]


def unpack(tensor: DTensor) -> list[np.ndarray]:
    """The component of every local device, in the order of `mesh.local_devices()` (on a
    multi-client mesh, this client's)."""
    _outside_trace("unpack", tensor)
    if not isinstance(tensor, DTensor):
        raise TypeError(f"unpack expects a DTensor, got {type(tensor).__name__}")
    storage = tensor.storage
    return [storage.device_shard(i) for i in tensor.mesh.local_device_ids()]


# -- moving values ------------------------------------------------------------------------------


def _resolve_match(layout: Layout, specs: Sequence[Spec], rank: int) -> Layout:
    """`layout` (for a tensor of `rank` dims) with every MATCH spec replaced by the spec the
    value has on that dim."""
    layout = layout.for_rank(rank)
    if layout.rank != rank:
        raise LayoutError(f"layout {layout.short_text()} has rank {layout.rank}, the tensor "
                          f"has rank {rank}")
    if MATCH not in layout.sharding_specs:
        return layout
    resolved = [have if want == MATCH else want
                for want, have in zip(layout.sharding_specs, specs)]
    return Layout(resolved, layout.mesh, layout.partial, parted=layout.is_parted())


def _check_fits(layout: Layout, shape: tuple[int, ...]) -> None:
    problems = layout.sharding.problems(layout.mesh.mesh_shape(), shape)
    if problems:
        raise LayoutError(f"a tensor of shape {list(shape)} cannot be laid out as "
                          f"{layout.short_text()}: {'; '.join(problems)}")


def _relayout_dtensor(tensor: DTensor, layout: Layout) -> DTensor:
    if layout.mesh != tensor.mesh:
        raise LayoutError(f"relayout cannot move a tensor between meshes (from "
                          f"{tensor.mesh.short_text()} to "
                          f"{layout.mesh.short_text()}); use copy_to_mesh")
    target = _resolve_match(layout, tensor.layout.sharding_specs, tensor.ndim)
    _check_fits(target, tensor.shape)
    if target.sharding == tensor.layout.sharding and target == tensor.layout:
        return tensor  # one DTensor per storage (donating it gives up every name of it)
    if target.sharding == tensor.layout.sharding:
        return DTensor(tensor.storage.alias(), target, tensor.shape)
    storage = relayout_storage(tensor.storage, target.sharding, tensor.shape,
                               backend_for(tensor.mesh))
    return DTensor(storage, target, tensor.shape)


def _relayout_traced(array: TracedArray, layout: Layout) -> TracedArray:
    if layout.is_parted():
        raise LayoutError(f"a relayout to the parted layout {layout.short_text()} inside a "
                          "compiled function: compiled functions compute on static layouts")
    if array.recorder.mesh != layout.mesh.mesh_shape():
        raise LayoutError(f"a relayout to {layout.short_text()} on "
                          f"{layout.mesh.short_text()} inside a function compiled for "
                          f"{array.recorder.mesh.text()}")
    current = array.value.type.sharding
    if current is None and MATCH in layout.sharding_specs:
        raise LayoutError("MATCH inside a compiled function needs the value's layout, which "
                          "is known only for arguments with a layout and relayout results")
    specs = () if current is None else Layout.from_sharding(current, layout.mesh).sharding_specs
    target = _resolve_match(layout, specs, array.value.type.rank)
    return tracing.traced_relayout(array, target.sharding)


def relayout(tensor: object, layout: Layout, name: str | None = None
             ) -> DTensor | TracedArray:
    """`tensor` laid out as `layout`; MATCH specs keep the tensor's spec on their dim.

    On a DTensor the relayout planner's collectives run now; a numpy array is placed with
    `layout` (as `copy_to_mesh`); inside a compiled function the relayout becomes an op of the
    traced program. `name` is accepted for the reference's signature and not used.
    """
    if tracing.is_traced(tensor):
        try:
            return _relayout_traced(tensor, layout)
        except LayoutError as e:
            raise LayoutError(f"{user_location()}: {e}") from None
    if not isinstance(tensor, DistributedValue):
        return copy_to_mesh(tensor, layout)
    return _relayout_dtensor(tensor.as_dtensor(), layout)


def relayout_like(tensor: DistributedValue | TracedArray, like: DistributedValue
                  ) -> DTensor | TracedArray:
    """`tensor` relayouted to the layout of `like` (a DTensor or DVariable; inside a compiled
    function also an array of the function, whose layout propagation chooses: the relayout
    then goes to that layout, its pending reductions applied)."""
    if tracing.is_traced(like):
        if not tracing.is_traced(tensor) or tensor.recorder is not like.recorder:
            raise TraceError("relayout_like inside a compiled function relayouts an array of "
                             "that function to another's layout", user_location())
        return tracing.traced_relayout_like(tensor, like)
    if not isinstance(like, DistributedValue):
        raise TypeError(f"relayout_like takes the layout of a DTensor or DVariable, got "
                        f"{type(like).__name__}")
    return relayout(tensor, like.layout)


@overload
def copy_to_mesh(tensor: TracedArray, layout: Layout) -> TracedArray: ...


@overload
def copy_to_mesh(tensor: np.ndarray | DistributedValue, layout: Layout) -> DTensor: ...


@overload
def copy_to_mesh(tensor: object, layout: Layout) -> DTensor | TracedArray: ...


def copy_to_mesh(tensor: object, layout: Layout) -> DTensor | TracedArray:
    """`tensor` (a numpy array, a DTensor on any mesh, or a traced value) laid out as
    `layout`. A DTensor on another mesh is gathered and laid out again."""
    if tracing.is_traced(tensor):
        return _relayout_traced(tensor, layout)
    if isinstance(tensor, DistributedValue):
        if tensor.mesh == layout.mesh:
            return _relayout_dtensor(tensor.as_dtensor(), layout)
        layout = _resolve_match(layout, tensor.layout.sharding_specs, tensor.ndim)
    array = native_array(tensor)
    try:
        dtype_name(array.dtype)
    except TypeError as e:
        raise TypeError(f"copy_to_mesh: {e}") from None
    if MATCH in layout.sharding_specs:
        raise LayoutError("MATCH specs need a DTensor to match; a numpy array has no layout")
    layout = layout.for_rank(array.ndim)
    if layout.rank != array.ndim:
        raise LayoutError(f"layout {layout.short_text()} has rank {layout.rank}, the array "
                          f"has rank {array.ndim}")
    _check_fits(layout, array.shape)
    return DTensor(place(array, layout.sharding, layout.mesh.mesh_shape(),
                         backend_for(layout.mesh)),
                   layout, array.shape)


def call_with_layout(fn: Callable[..., object], layout: Layout | None, *args: object,
                     **kwargs: object) -> DTensor | TracedArray | object:
    """`fn(*args, **kwargs)` run with `layout.mesh` as the default mesh, its result laid out
    as `layout` (packed if `fn` returns a numpy array). With no layout, just `fn(...)`."""
    if layout is None:
        return fn(*args, **kwargs)
    with default_mesh(layout.mesh):
        result = fn(*args, **kwargs)
    return copy_to_mesh(result, layout)
