"""The numpy backend: every device of the mesh simulated at once in this process.

Every value is held in the stacked form (see `stacked`), so each op runs once, as a batched
numpy op over the mesh axes (`kernels_numpy`), and collectives are reshapes and reductions over
those axes (`stacked_comm`). After every op the program checks the result against its type:
local shape, dtype and mesh extents. A mesh axis the result is sharded over but that has
extent 1 (a value that is the same on every device there, like a ``full``) is broadcast as a
view; any other disagreement is a compiler bug and raises `ExecutionError`.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Sequence

import numpy as np

from dtensor_compiler.ir.core import Module, Operation
from dtensor_compiler.ir.mesh_shape import MeshShape
from dtensor_compiler.ir.types import TensorType, numpy_dtype
from dtensor_compiler.runtime import checkpoint_kernels  # also registers their kernels
from dtensor_compiler.runtime.backends import Backend, Storage
from dtensor_compiler.runtime.executor import (
    ArrayType,
    Conform,
    ExecutionError,
    KernelTable,
    Program,
)
from dtensor_compiler.runtime.kernels_numpy import NUMPY_KERNELS
from dtensor_compiler.runtime.stacked import StackedStorage, expected_stacked_shape
from dtensor_compiler.runtime.stacked_context import StackedContext


def _array_type(mesh: MeshShape) -> ArrayType:
    def array_type(t: TensorType) -> tuple[tuple[int, ...], np.dtype]:
        assert t.sharding is not None, "every value of a localized module has a layout"
        return expected_stacked_shape(t.shape, t.sharding, mesh), numpy_dtype(t.dtype)
    return array_type


def _conformer(mesh: MeshShape) -> Conform:
    def conform(out: np.ndarray, type: TensorType, op: Operation) -> np.ndarray:
        """`out` with the exact stacked shape of `type`, broadcasting sharded size-1 mesh
        axes."""
        sharding = type.sharding
        assert sharding is not None
        expected = expected_stacked_shape(type.shape, sharding, mesh)
        where = f"{op.name}" + (f" at {op.loc}" if op.loc is not None else "")
        if out.dtype != numpy_dtype(type.dtype):
            raise ExecutionError(f"{where} produced {out.dtype}, its type says {type.text()}")
        k = len(mesh.dims)
        sharded = set(sharding.sharded_mesh_dims())
        fits = out.ndim == len(expected) and out.shape[k:] == expected[k:] and all(
            e == x or (x == 1 and m in sharded)
            for m, e, x in zip(mesh.names, expected, out.shape)
        )
        if not fits:
            raise ExecutionError(f"{where} produced stacked shape {list(out.shape)}; its type "
                                 f"{type.text()} on {mesh.text()} needs {list(expected)}")
        return np.broadcast_to(out, expected)
    return conform


class SimulatedExecutor:
    """Runs a localized module on `StackedStorage` values (implements `backends.Executor`)."""

    def __init__(self, module: Module, kernels: KernelTable = NUMPY_KERNELS,
                 donated: frozenset[int] = frozenset()) -> None:
        mesh = module.mesh
        self.mesh = mesh
        self.program = Program(module, kernels, StackedContext(mesh), _array_type(mesh),
                               _conformer(mesh), donated)
        self._donated = donated
        self._lock = checkpoint_kernels.program_lock(module)
        self._padded = any(v.type.padded for v in module.main.values())
        """Padding may hold anything (log of a zero, NaN): a program with padded values runs
        with numpy's floating-point warnings off, as they would be about padding."""
        self.results = []
        for value in module.main.results:
            assert value.type.sharding is not None
            self.results.append((value.type.sharding, value.type.global_shape(mesh)))

    def run(self, inputs: Sequence[Storage]) -> list[Storage]:
        """Run on `inputs`; those at the donated positions may be written over (the caller
        gives them up), which happens only to an array no other storage or input views."""
        arrays = []
        for position, x in enumerate(inputs):
            assert isinstance(x, StackedStorage), "the numpy backend runs on stacked storage"
            # before `arrays` holds the view: `_sole_owner` counts the references to it
            owned = _sole_owner(x.stacked) if position in self._donated else None
            if owned is not None and not any(
                    j != position and (y is x or np.may_share_memory(
                        owned, y.stacked))  # type: ignore[attr-defined]
                    for j, y in enumerate(inputs)):
                arrays.append(owned)
            else:
                arrays.append(x.stacked)
        return [StackedStorage(out, sharding, self.mesh, shape, checked=False)
                for out, (sharding, shape) in zip(self.run_stacked(arrays), self.results)]

    def run_stacked(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Stacked arrays in, stacked arrays out (one per returned value). A program that
        saves or restores checkpoints runs alone among such programs of this process."""
        with np.errstate(all="ignore") if self._padded else contextlib.nullcontext(), \
                self._lock:
            return self.program.run(inputs)


def _sole_owner(view: np.ndarray) -> np.ndarray | None:
    """The writeable array a storage's read-only `view` shows whole, if nothing but that view
    refers to it (so writing it changes no other value); None otherwise."""
    # a view held by one storage is referred to by it, this parameter and getrefcount's
    # argument; its array by the view's .base, the local name and getrefcount's argument
    if sys.getrefcount(view) > 3:
        return None  # another storage holds the same view (a program that returned its input)
    base = view.base
    if not isinstance(base, np.ndarray) or base.base is not None or not base.flags.writeable \
            or base.shape != view.shape or base.strides != view.strides:
        return None
    return base if sys.getrefcount(base) <= 3 else None


BACKEND = Backend(name="numpy", kernels=NUMPY_KERNELS, place=StackedStorage.from_global,
                  from_device_shards=StackedStorage.from_device_shards,
                  executor=lambda module, donated: SimulatedExecutor(module, donated=donated))
