"""Meshes, layouts and a per-device reference shared by the stacked-runtime tests."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np

from dtensor_compiler.ir.sharding import MeshShape, Sharding

MESHES: dict[str, MeshShape] = {
    "1d": MeshShape((("x", 4),)),
    "2x2": MeshShape((("x", 2), ("y", 2))),
    "2x4": MeshShape((("x", 2), ("y", 4))),
    "2x2x2": MeshShape((("x", 2), ("y", 2), ("z", 2))),
}


def all_shardings(rank: int, mesh: MeshShape, partial_ops: tuple[str, ...] = ("sum",)
                  ) -> Iterator[Sharding]:
    """Every layout of a rank-`rank` tensor: each mesh dim replicated, pending one of
    `partial_ops`, or splitting one tensor dim, in every major-to-minor order."""
    states = ["rep", *(f"partial:{op}" for op in partial_ops), *range(rank)]
    for choice in itertools.product(states, repeat=len(mesh.dims)):
        partial = {m: str(c).split(":")[1] for m, c in zip(mesh.names, choice)
                   if str(c).startswith("partial")}
        groups = [[m for m, c in zip(mesh.names, choice) if c == i] for i in range(rank)]
        for orders in itertools.product(*(itertools.permutations(g) for g in groups)):
            yield Sharding(tuple(tuple(o) for o in orders), tuple(partial.items()))


def reference_block(global_array: np.ndarray, sharding: Sharding, mesh: MeshShape,
                    device: int) -> np.ndarray:
    """A device's local block, spelled out from the documented convention: row-major device
    ids, and block ``c_x * n_y + c_y`` for a tensor dim sharded over ``(x, y)``."""
    coords = dict(zip(mesh.names, np.unravel_index(device, mesh.sizes)))
    index = []
    for size, dims in zip(global_array.shape, sharding.dims):
        block = 0
        for m in dims:
            block = block * mesh.size(m) + int(coords[m])
        length = size // mesh.group_size(dims)
        index.append(slice(block * length, (block + 1) * length))
    return global_array[tuple(index)]
