"""The simulated mesh: run a localized module for all devices at once in this process.

Every value is held in the stacked form (see `stacked`), so each op runs once, as a batched
numpy op over the mesh axes, through a table of kernels (`kernels_numpy.NUMPY_KERNELS`).
After every op the executor checks the result against its type: local shape, dtype and mesh
extents. A mesh axis the result is sharded over but that has extent 1 (a value that is the same
on every device there, like a ``full``) is broadcast as a view; any other disagreement is a
compiler bug and raises `ExecutionError`. A value is released after its last use.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from dtensor_compiler.errors import DTensorError, ShapeError
from dtensor_compiler.ir.core import Function, Module, Operation
from dtensor_compiler.ir.sharding import MeshShape
from dtensor_compiler.ir.types import TensorType, numpy_dtype
from dtensor_compiler.runtime.kernels_numpy import NUMPY_KERNELS, Kernel
from dtensor_compiler.runtime.stacked import expected_stacked_shape


class ExecutionError(DTensorError, RuntimeError):
    """A localized program broke the stacked convention while running (a compiler bug)."""


def _conform(out: np.ndarray, type: TensorType, mesh: MeshShape, op: Operation) -> np.ndarray:
    """`out` with the exact stacked shape of `type`, broadcasting sharded size-1 mesh axes."""
    sharding = type.sharding
    assert sharding is not None
    expected = expected_stacked_shape(type.shape, sharding, mesh)
    if out.shape == expected and out.dtype == numpy_dtype(type.dtype):
        return out
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


def _last_uses(func: Function) -> list[list[int]]:
    """Per op, the ids of the values whose last use it is (returned values are never freed)."""
    last: dict[int, int] = {}
    for i, op in enumerate(func.ops):
        for v in op.operands:
            last[id(v)] = i
    returned = {id(v) for v in func.results}
    out: list[list[int]] = [[] for _ in func.ops]
    for value_id, i in last.items():
        if value_id not in returned:
            out[i].append(value_id)
    return out


class SimulatedExecutor:
    """Runs the main function of a localized module on stacked arrays."""

    def __init__(self, kernels: Mapping[str, Kernel] = NUMPY_KERNELS) -> None:
        self.kernels = kernels

    def run(self, module: Module, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Stacked inputs in, stacked results out (one per returned value)."""
        if not module.localized:
            raise ExecutionError("the simulated mesh runs localized modules only; run the "
                                 "'localize' pass first")
        func, mesh = module.main, module.mesh
        if len(inputs) != len(func.args):
            raise ShapeError(f"@{func.name} takes {len(func.args)} inputs, got {len(inputs)}")
        env: dict[int, np.ndarray] = {}
        for arg, x in zip(func.args, inputs):
            env[id(arg)] = self._check_input(arg.name_hint or "?", x, arg.type, mesh)
        for op, dead in zip(func.ops, _last_uses(func)):
            kernel = self.kernels.get(op.name)
            if kernel is None:
                raise ExecutionError(f"no simulated kernel for op {op.name!r}")
            out = kernel(op, [env[id(v)] for v in op.operands], mesh)
            if op.result is not None:
                env[id(op.result)] = _conform(out, op.result.type, mesh, op)
            for value_id in dead:
                del env[value_id]
        return [env[id(v)] for v in func.results]

    @staticmethod
    def _check_input(name: str, x: np.ndarray, type: TensorType, mesh: MeshShape
                     ) -> np.ndarray:
        assert type.sharding is not None
        expected = expected_stacked_shape(type.shape, type.sharding, mesh)
        if x.shape != expected or x.dtype != numpy_dtype(type.dtype):
            raise ShapeError(f"input %{name} of type {type.text()} on {mesh.text()} must be a "
                             f"stacked {type.dtype} array of shape {list(expected)}, got "
                             f"{x.dtype} {list(x.shape)}")
        return x
