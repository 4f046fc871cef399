"""Backends: a kernel library, the storage type of distributed values, and an executor.

`compile(backend=...)` and the eager API find a backend by name with `get_backend`. A
backend's module is imported on first use (`_PROVIDERS`), so a backend whose dependencies
are not installed costs nothing until it is asked for.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from dtensor_compiler.errors import DTensorError
from dtensor_compiler.ir.core import Module
from dtensor_compiler.ir.mesh_shape import MeshShape
from dtensor_compiler.ir.sharding import Sharding
from dtensor_compiler.runtime.executor import KernelTable


class Storage(Protocol):
    """How a backend holds the shards of one distributed value."""

    sharding: Sharding
    mesh: MeshShape
    shape: tuple[int, ...]
    """The global shape."""

    @property
    def dtype(self) -> np.dtype: ...

    @property
    def local_shape(self) -> tuple[int, ...]:
        """The (padded) block shape every device holds."""
        ...

    def to_global(self) -> np.ndarray:
        """The global value (pending reductions applied) as a new array."""
        ...

    def device_shard(self, device_id: int) -> np.ndarray:
        """The valid part of one device's block, as a new array."""
        ...

    def alias(self) -> Storage:
        """The same shards as a storage object of its own (for a second DTensor of them:
        donating one must see that the other exists)."""
        ...


@dataclass(frozen=True)
class KernelRun:
    """What runs one compute step of a localized program on a backend."""

    name: str
    """The kernel's name (its body's), or the printed result of an op run outside one."""
    runs_on: str
    """``triton``, ``torch`` or ``numpy``; ``op by op`` for a body run one op at a time."""
    ops: tuple[str, ...]
    """The names of the ops it computes."""
    detail: str
    """The kernel's template, or for an op by op body why and what runs each op."""
    source: str
    """A generated kernel's source; a comment saying what runs the step otherwise."""


class Executor(Protocol):
    """Runs the entry function of one localized module."""

    def run(self, inputs: Sequence[Storage]) -> list[Storage]: ...


@dataclass(frozen=True)
class Backend:
    """One way to run programs (see the module docstring)."""

    name: str
    kernels: KernelTable
    place: Callable[[np.ndarray, Sharding, MeshShape], Storage]
    """A global array laid out as a sharding (never a view of it)."""
    from_device_shards: Callable[[Sequence[np.ndarray], Sharding, MeshShape, tuple[int, ...]],
                                 Storage]
    """The storage of a value of a global shape from the valid part of each device's block,
    in device-id order (ValueError for a block of the wrong shape, or when replicated copies
    differ)."""
    executor: Callable[[Module, frozenset[int]], Executor]
    """The executor of a localized module whose arguments at the given positions are donated
    (their storage may be written over)."""
    pipeline: str | None = None
    """The pass pipeline programs for this backend are planned with, when the user gives
    none (None: the default pipeline)."""
    kernel_runs: Callable[[Module], list[KernelRun]] | None = None
    """What runs each compute step of a localized module, in program order (None: a
    backend that generates no kernels, every op on its kernel table)."""


_PROVIDERS: dict[str, str] = {
    "numpy": "dtensor_compiler.runtime.simulated",
    "distributed": "dtensor_compiler.runtime.distributed",
    "triton": "dtensor_compiler.runtime.triton_backend",
}
"""Backend name -> the module that defines it as ``BACKEND``."""

_INSTALL = {"triton": 'pip install "dtensor-compiler[triton]"'}
"""How to install what a backend needs (default: torch)."""


def backend_names() -> list[str]:
    return sorted(_PROVIDERS)


def default_backend(local_devices: int, devices: int) -> str:
    """The backend for a mesh of `devices` of which `local_devices` are this process's:
    ``distributed`` when other clients hold some, else ``numpy`` (the simulated mesh)."""
    return "distributed" if local_devices < devices else "numpy"


def get_backend(name: str) -> Backend:
    """The backend called `name`; DTensorError naming the known ones otherwise."""
    module = _PROVIDERS.get(name)
    if module is None:
        raise DTensorError(f"unknown backend {name!r}; backends are {backend_names()}")
    try:
        backend = importlib.import_module(module).BACKEND
    except ModuleNotFoundError as e:
        install = _INSTALL.get(name, "pip install torch==2.13.0")
        raise DTensorError(f"backend {name!r} needs the {e.name} package: {install}") from None
    assert isinstance(backend, Backend)
    return backend
