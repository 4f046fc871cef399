"""The structure of what a traced function returns: nested tuples, lists and dicts of arrays.

A compiled function may return one array, or any nesting of tuples (named tuples too), lists
and dicts (keys in sorted order, as JAX flattens them) whose leaves are arrays or numbers.
Tracing flattens it to the IR function's results (`flatten`), and a run rebuilds the same
structure around the results (`OutputTree.unflatten`); ``out_layouts`` may be given in the same
structure or flat, one entry per leaf (`flatten_layouts`, where None is a leaf: "free").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class OutputTree:
    """A node: a leaf (`kind` ``leaf``), or a container of `children` (``tuple``, ``list``,
    ``dict`` with `keys`, or a named tuple of type `namedtuple`)."""

    kind: str
    children: tuple[OutputTree, ...] = ()
    keys: tuple[object, ...] = ()
    namedtuple: type | None = None

    @property
    def leaves(self) -> int:
        return 1 if self.kind == "leaf" else sum(c.leaves for c in self.children)

    def unflatten(self, leaves: Sequence[object]) -> object:
        """The structure with `leaves` (as many as it has, in flattening order) in place."""
        assert len(leaves) == self.leaves, (len(leaves), self.leaves)
        it = iter(leaves)
        return self._build(lambda: next(it))

    def _build(self, take: Callable[[], object]) -> object:
        if self.kind == "leaf":
            return take()
        parts = [c._build(take) for c in self.children]
        if self.kind == "dict":
            return dict(zip(self.keys, parts))
        if self.kind == "list":
            return parts
        return self.namedtuple(*parts) if self.namedtuple is not None else tuple(parts)


LEAF = OutputTree("leaf")


def flatten(value: object, is_leaf: Callable[[object], bool] = lambda v: True
            ) -> tuple[list[object], OutputTree]:
    """The leaves of `value` in order and its structure. Tuples, lists and dicts are
    containers; anything else is a leaf when `is_leaf` says so (the caller's check of what a
    function may return), else a container it does not know (TypeError naming it)."""
    leaves: list[object] = []

    def walk(v: object) -> OutputTree:
        if isinstance(v, (tuple, list)):
            children = tuple(walk(c) for c in v)
            if isinstance(v, list):
                return OutputTree("list", children)
            named = type(v) if hasattr(v, "_fields") else None
            return OutputTree("tuple", children, namedtuple=named)
        if isinstance(v, dict):
            try:
                keys = tuple(sorted(v))
            except TypeError:
                raise TypeError("a dict whose keys do not sort (a dict is flattened in key "
                                "order)") from None
            return OutputTree("dict", tuple(walk(v[k]) for k in keys), keys)
        if not is_leaf(v):
            raise TypeError(f"a {type(v).__name__}")
        leaves.append(v)
        return LEAF

    return leaves, walk(value)
