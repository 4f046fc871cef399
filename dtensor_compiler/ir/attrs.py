"""Typed op attributes: the kinds an attribute may have, and the spec of one attribute.

An op definition lists its attributes as `AttrSpec`s (name, kind, default). The builder and
the parser turn what they are given into the kind's Python type (`AttrSpec.coerce`: a list of
ints becomes a tuple of ints, ``"sum"`` a `ReduceOp`, a numpy integer an int) and fill in
defaults; the verifier checks that every attribute holds exactly its kind's type
(`AttrSpec.problem`). So code that reads ``op.attrs["axis"]`` of a verified op gets an int.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

import numpy as np

from dtensor_compiler.ir.sharding import ReduceOp

Attr = int | float | bool | str | tuple | np.ndarray | ReduceOp
"""The Python types attribute values have."""


def int_attr(attrs: Mapping[str, Attr], name: str) -> int:
    """The int attribute `name` of a verified op's `attrs`."""
    value = attrs[name]
    assert isinstance(value, int), (name, value)
    return value


def str_attr(attrs: Mapping[str, Attr], name: str) -> str:
    """The string attribute `name` of a verified op's `attrs`."""
    value = attrs[name]
    assert isinstance(value, str), (name, value)
    return value


def strs_attr(attrs: Mapping[str, Attr], name: str) -> tuple[str, ...]:
    """The list-of-names attribute `name` of a verified op's `attrs`."""
    value = attrs[name]
    assert isinstance(value, tuple), (name, value)
    return value


class AttrKind(Enum):
    """What an attribute holds; the value is how messages name it."""

    INT = "int"
    BOOL = "bool"
    STR = "string"
    INTS = "list of ints"
    STRS = "list of names"
    REDUCE_OP = "reduction"
    SCALAR = "bool, int or float"
    """The fill value of ``full``."""
    ARRAY = "dense array"

    def holds(self, value: object) -> bool:
        """Whether `value` has exactly this kind's Python type."""
        if self is AttrKind.INTS or self is AttrKind.STRS:
            item = int if self is AttrKind.INTS else str
            return type(value) is tuple and all(type(v) is item for v in value)
        if self is AttrKind.ARRAY:
            return isinstance(value, np.ndarray)
        return type(value) in _TYPES[self]

    def coerce(self, value: object) -> Attr:
        """`value` as this kind's Python type; ValueError saying what was expected."""
        if self.holds(value):
            return value  # type: ignore[return-value]
        if self is AttrKind.REDUCE_OP and isinstance(value, str):
            return ReduceOp.parse(value)
        if isinstance(value, np.generic) and self in (AttrKind.INT, AttrKind.BOOL,
                                                      AttrKind.SCALAR):
            value = value.item()
        elif isinstance(value, (tuple, list)) and self in (AttrKind.INTS, AttrKind.STRS):
            value = tuple(v.item() if isinstance(v, np.generic) else v for v in value)
        if self.holds(value):
            return value  # type: ignore[return-value]
        raise ValueError(f"expected a {self.value}, got {_describe(value)}")


_TYPES: dict[AttrKind, tuple[type, ...]] = {
    AttrKind.INT: (int,),
    AttrKind.BOOL: (bool,),
    AttrKind.STR: (str,),
    AttrKind.REDUCE_OP: (ReduceOp,),
    AttrKind.SCALAR: (bool, int, float),
}


def _describe(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"an array of shape {list(value.shape)}"
    return f"{type(value).__name__} {value!r}"


_REQUIRED = object()


@dataclass(frozen=True)
class AttrSpec:
    """One attribute of an op: its name, kind and default (`required` when it has none)."""

    name: str
    kind: AttrKind
    default: object = _REQUIRED
    elide_default: bool = False
    """The printer leaves the attribute out when it holds its default (the parser fills it
    back in)."""

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED

    def coerce(self, value: object) -> Attr:
        """`value` as the attribute's type; ValueError naming the attribute otherwise."""
        try:
            return self.kind.coerce(value)
        except ValueError as e:
            raise ValueError(f"attribute {self.name!r}: {e}") from None

    def problem(self, value: object) -> str | None:
        """Why `value` is not a valid value of this attribute as stored in an op, or None."""
        if self.kind.holds(value):
            return None
        return f"attribute {self.name!r}: expected a {self.kind.value}, got {_describe(value)}"
