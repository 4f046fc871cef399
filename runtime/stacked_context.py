"""The simulated mesh as kernels see it: an `ExecContext` over stacked arrays.

Every array has one leading axis per mesh dim (see `stacked`), so a device's block number
along a sharded dim is an integer array over those axes, and collectives run on the whole
mesh at once (`StackedCommunicator`). On a mesh without dims the arrays are global values,
which is how constant folding runs kernels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dtensor_compiler.ir.mesh_shape import MeshShape
from dtensor_compiler.ir.sharding import Sharding
from dtensor_compiler.runtime.box import Box
from dtensor_compiler.runtime.stacked import block_index, place_partial, to_stacked
from dtensor_compiler.runtime.stacked_comm import StackedCommunicator


class StackedContext:
    """Implements `executor.ExecContext` for the simulated mesh."""

    def __init__(self, mesh: MeshShape) -> None:
        self.mesh = mesh
        self.mesh_axes = len(mesh.dims)
        self.comm = StackedCommunicator(mesh)
        self.box = Box.of_mesh(mesh)

    def block_index(self, mesh_dims: Sequence[str]) -> np.ndarray:
        return block_index(mesh_dims, self.mesh)

    def spread_partial(self, x: np.ndarray, sharding: Sharding) -> np.ndarray:
        return place_partial(x, sharding, self.mesh)

    def distribute(self, value: np.ndarray, sharding: Sharding) -> np.ndarray:
        return to_stacked(value, sharding, self.mesh)

    def barrier(self, key: str, failure: str | None) -> dict[int, str]:
        return {}  # every device is here
