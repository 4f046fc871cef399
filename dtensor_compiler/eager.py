"""Eager layout changes as compiled programs: `relayout` of a DTensor runs a one-op module.

``relayout(x, layout)`` outside a compiled function builds the module

    func @relayout(%x: f32[8,8] @ {x, -}) -> (f32[8,8] @ {-, x}) {
      %0 = relayout %x : f32[8,8] @ {-, x}
      return %0
    }

runs insert-collectives and localize on it, and executes it with the backend, the same path a
compiled function takes. Programs are cached per (source layout, target layout, mesh, shape,
dtype, backend), so repeating a relayout plans it once.
"""

from __future__ import annotations

import functools

import numpy as np

from dtensor_compiler import passes  # noqa: F401  (registers the passes the program runs)
from dtensor_compiler.ir.builder import Builder
from dtensor_compiler.ir.core import Function, Module, Value
from dtensor_compiler.ir.mesh_shape import MeshShape
from dtensor_compiler.ir.opdef import InferContext
from dtensor_compiler.ir.reasons import UserRelayout
from dtensor_compiler.ir.sharding import Sharding
from dtensor_compiler.ir.types import TensorType, dtype_name
from dtensor_compiler.pass_manager import PassManager
from dtensor_compiler.runtime.backends import Executor, Storage, get_backend


def relayout_storage(storage: Storage, dst: Sharding, shape: tuple[int, ...],
                     backend: str = "numpy") -> Storage:
    """`storage` (a value of global `shape`) laid out as `dst` by `backend`."""
    program = _relayout_program(storage.sharding, dst, storage.mesh, shape,
                                dtype_name(storage.dtype), backend)
    (out,) = program.run([storage])
    return out


@functools.lru_cache(maxsize=1024)
def _relayout_program(src: Sharding, dst: Sharding, mesh: MeshShape, shape: tuple[int, ...],
                      dtype: str, backend: str) -> Executor:
    arg = Value(TensorType(dtype, shape, src), name_hint="x")
    func = Function("relayout", [arg])
    result = Builder(func, InferContext(mesh)).create("relayout", [arg], sharding=dst,
                                                      why=UserRelayout())
    func.set_results([result])
    module = Module(mesh, [func])
    PassManager.parse("insert-collectives,localize", verify=False, keep_ir=False).run(module)
    return get_backend(backend).executor(module, frozenset())


def place(value: np.ndarray, sharding: Sharding, mesh: MeshShape,
          backend: str = "numpy") -> Storage:
    """A global array laid out as `sharding` in `backend`'s storage (for the distributed
    backend, this client's blocks of it)."""
    return get_backend(backend).place(value, sharding, mesh)
