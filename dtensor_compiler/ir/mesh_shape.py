"""`MeshShape`: the part of a mesh the compiler needs, ordered (name, size) pairs."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from math import prod


@dataclass(frozen=True)
class MeshShape:
    """Ordered mesh dims with their sizes, e.g. ``(("dp", 2), ("tp", 4))``."""

    dims: tuple[tuple[str, int], ...]

    # Planning asks for mesh dim sizes hundreds of thousands of times, so the lookups are
    # computed once (cached_property writes the instance dict, which a frozen dataclass allows).
    @cached_property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.dims)

    @cached_property
    def _size_of(self) -> dict[str, int]:
        return dict(self.dims)

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(size for _, size in self.dims)

    @property
    def num_devices(self) -> int:
        return prod(self.sizes)

    def size(self, name: str) -> int:
        size = self._size_of.get(name)
        if size is None:
            raise KeyError(f"mesh has no dim {name!r}; dims are {list(self.names)}")
        return size

    def index(self, name: str) -> int:
        return self.names.index(name)

    def group_size(self, names: tuple[str, ...] | list[str]) -> int:
        """Number of devices in one group of a collective over `names`."""
        if not names:
            return 1
        return prod(self.size(n) for n in names)

    def text(self) -> str:
        return "mesh<" + ", ".join(f"{n}={s}" for n, s in self.dims) + ">"

    def __str__(self) -> str:
        return self.text()
