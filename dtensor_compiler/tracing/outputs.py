"""The structure of what a traced function returns, or of what `grad` differentiates with
respect to: nested tuples, lists and dicts of arrays.

A compiled function may return one array, or any nesting of tuples (named tuples too), lists
and dicts (keys in sorted order, as JAX flattens them) whose leaves are arrays or numbers;
a None in it holds no array and comes back as None.
An ``OrderedDict`` or a ``defaultdict`` is flattened like a dict and rebuilt as what it was
(the insertion order, the default factory); another dict subclass comes back a plain dict.
Tracing flattens it to the IR function's results (`flatten`), and a run rebuilds the same
structure around the results (`OutputTree.unflatten`). ``out_layouts`` are flattened the same
way (None is a leaf there: "free"): given flat, one per array, or nested like the results
(`OutputTree.matches`).
"""

from __future__ import annotations

from collections import OrderedDict, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum


class DictKind(Enum):
    """The kinds of dict a structure rebuilds."""

    DICT = "dict"
    ORDERED = "OrderedDict"
    DEFAULT = "defaultdict"


@dataclass(frozen=True)
class OutputTree:
    """A node: a leaf (`kind` ``leaf``), ``none`` (a None, which holds no array), or a
    container of `children` (``tuple``, ``list``, ``dict`` with `keys`, or a named tuple of
    type `namedtuple`)."""

    kind: str
    children: tuple[OutputTree, ...] = ()
    keys: tuple[object, ...] = ()
    namedtuple: type | None = None
    key_types: tuple[type, ...] = ()
    """The types of a dict's `keys`: equal keys of other types (``1``, ``1.0``, ``True``)
    make another structure (the function sees them, and a returned dict has them)."""
    mapping: DictKind = DictKind.DICT
    """What a dict is rebuilt as."""
    order: tuple[int, ...] = ()
    """An ``OrderedDict``'s keys in insertion order, as positions in the sorted `keys`."""
    default_factory: Callable[[], object] | None = None
    """A ``defaultdict``'s factory."""

    @property
    def leaves(self) -> int:
        return 1 if self.kind == "leaf" else sum(c.leaves for c in self.children)

    def is_flat(self) -> bool:
        """A leaf, or one tuple or list of leaves."""
        return self.kind == "leaf" or (self.kind in ("tuple", "list") and
                                       all(c.kind == "leaf" for c in self.children))

    def matches(self, other: OutputTree) -> bool:
        """The same nesting: dicts with the same keys, sequences (tuples, named tuples,
        lists alike) of the same lengths, leaves where `other` has leaves."""
        if (self.kind == "dict") != (other.kind == "dict") or (
                (self.kind == "leaf") != (other.kind == "leaf")):
            return False
        return (self.keys == other.keys and len(self.children) == len(other.children)
                and all(a.matches(b) for a, b in zip(self.children, other.children)))

    def text(self) -> str:
        """``(_, [_, _], {a: _})``: the nesting, each leaf an underscore."""
        if self.kind == "leaf":
            return "_"
        if self.kind == "none":
            return "None"
        if self.kind == "dict":
            return "{" + ", ".join(f"{k!r}: {c.text()}"
                                   for k, c in zip(self.keys, self.children)) + "}"
        inner = ", ".join(c.text() for c in self.children)
        if self.kind == "list":
            return f"[{inner}]"
        return f"({inner},)" if len(self.children) == 1 else f"({inner})"

    def paths(self) -> list[str]:
        """Per leaf, the keys and indices to it (``['w']``, ``[1][0]``; ``""`` for a leaf)."""
        if self.kind == "leaf":
            return [""]
        steps = ([f"[{k!r}]" for k in self.keys] if self.kind == "dict" else
                 [f"[{i}]" for i in range(len(self.children))])
        return [step + rest for step, child in zip(steps, self.children)
                for rest in child.paths()]

    def unflatten(self, leaves: Sequence[object]) -> object:
        """The structure with `leaves` (as many as it has, in flattening order) in place."""
        assert len(leaves) == self.leaves, (len(leaves), self.leaves)
        it = iter(leaves)
        return self._build(lambda: next(it))

    def _build(self, take: Callable[[], object]) -> object:
        if self.kind == "leaf":
            return take()
        if self.kind == "none":
            return None
        parts = [c._build(take) for c in self.children]
        if self.kind == "dict":
            if self.mapping is DictKind.ORDERED:
                return OrderedDict((self.keys[i], parts[i]) for i in self.order)
            if self.mapping is DictKind.DEFAULT:
                return defaultdict(self.default_factory, zip(self.keys, parts))
            return dict(zip(self.keys, parts))
        if self.kind == "list":
            return parts
        return self.namedtuple(*parts) if self.namedtuple is not None else tuple(parts)


LEAF = OutputTree("leaf")
NONE = OutputTree("none")
"""``None`` in a structure: no leaves (``(loss, None)`` returns one array), rebuilt as None."""


def unflatten_each(trees: Sequence[OutputTree], leaves: Sequence[object]) -> list[object]:
    """Each tree built from its run of `leaves` (as many as the trees have together, in
    order)."""
    it = iter(leaves)
    return [tree.unflatten([next(it) for _ in range(tree.leaves)]) for tree in trees]


def flatten(value: object, is_leaf: Callable[[object], bool] = lambda v: True
            ) -> tuple[list[object], OutputTree]:
    """The leaves of `value` in order and its structure. Tuples, lists and dicts are
    containers; anything else is a leaf when `is_leaf` says so, else TypeError naming it and
    where it is (``a NoneType at [1]['b']``); TypeError too for a dict whose keys do not
    sort."""
    leaves, _, tree = flatten_with_paths(value, is_leaf)
    return leaves, tree


def flatten_with_paths(value: object, is_leaf: Callable[[object], bool] = lambda v: True
                       ) -> tuple[list[object], list[str], OutputTree]:
    """`flatten`, with each leaf's path too (``['w']``, ``[1][0]``; ``""`` for a bare
    leaf)."""
    leaves: list[object] = []
    paths: list[str] = []
    tree = _walk(value, "", is_leaf, leaves, paths)
    return leaves, paths, tree


def _walk(v: object, path: str, is_leaf: Callable[[object], bool], leaves: list[object],
          paths: list[str]) -> OutputTree:
    """`v`'s structure, its leaves and their paths appended (a function of the module, not a
    closure calling itself: that would be a reference cycle holding every leaf, traced arrays
    and their whole program included, until the cyclic collector ran)."""
    if isinstance(v, (tuple, list)):
        children = tuple(_walk(c, f"{path}[{i}]", is_leaf, leaves, paths)
                         for i, c in enumerate(v))
        if isinstance(v, list):
            return OutputTree("list", children)
        named = type(v) if hasattr(v, "_fields") else None
        return OutputTree("tuple", children, namedtuple=named)
    if isinstance(v, dict):
        try:
            keys = tuple(sorted(v))
        except TypeError:
            where = f" at {path}" if path else ""
            raise TypeError(f"a dict whose keys do not sort{where} (a dict is flattened "
                            "in key order)") from None
        children = tuple(_walk(v[k], f"{path}[{k!r}]", is_leaf, leaves, paths) for k in keys)
        key_types = tuple(map(type, keys))
        if isinstance(v, OrderedDict):
            position = {k: i for i, k in enumerate(keys)}
            return OutputTree("dict", children, keys, key_types=key_types,
                              mapping=DictKind.ORDERED, order=tuple(position[k] for k in v))
        if isinstance(v, defaultdict):
            return OutputTree("dict", children, keys, key_types=key_types,
                              mapping=DictKind.DEFAULT, default_factory=v.default_factory)
        return OutputTree("dict", children, keys, key_types=key_types)
    if v is None and not is_leaf(v):
        return NONE
    if not is_leaf(v):
        raise TypeError(f"a {type(v).__name__}" + (f" at {path}" if path else ""))
    leaves.append(v)
    paths.append(path)
    return LEAF
