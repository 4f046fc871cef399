"""What one collective kind is: its layout transfer, local shape, planner moves and cost shape.

Every op that changes a value's layout (``all_reduce``, ``reduce_scatter``, ``all_gather``,
``all_to_all``, and the local ``local_slice`` and ``make_partial``) carries a `CollectiveDef`
in its op definition (`ir/ops/collectives.py`). Everything else reads it from there:

- the verifier checks a collective's result layout against `transfer`;
- shape inference on localized IR uses `local_shape`;
- the relayout planner (`planner.py`) takes its edges from `moves`;
- the cost model (`cost.py`) prices it from `ring_passes` and `charged` bytes;
- the explain table counts only collectives that `moves_data`;
- a runtime runs it with its communicator's method of the same name as the op.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from enum import Enum

from dtensor_compiler.ir.attrs import Attr
from dtensor_compiler.ir.mesh_shape import MeshShape
from dtensor_compiler.ir.sharding import ReduceOp, Sharding

Shape = tuple[int, ...]
Attrs = Mapping[str, Attr]


class Charged(Enum):
    """Which per-device buffer a collective's time is proportional to."""

    INPUT = "input"
    OUTPUT = "output"


@dataclass(frozen=True)
class MoveContext:
    """What the planner knows besides the current layout when it asks for moves."""

    mesh_names: tuple[str, ...]
    keep: frozenset[str]
    """Mesh dims whose pending reduction the target keeps (not to be reduced)."""
    wanted: tuple[tuple[str, ReduceOp], ...]
    """The pending reductions of the target layout."""


@dataclass(frozen=True)
class Move:
    """One edge of the planner's graph: this collective with these attributes, and the
    layout it leads to."""

    mesh_dims: tuple[str, ...]
    attrs: tuple[tuple[str, Attr], ...]
    """The op's attributes other than ``mesh_dims``, in the definition's order."""
    result: Sharding


@dataclass(frozen=True, kw_only=True)
class CollectiveDef:
    """The facts of one collective kind (see the module docstring)."""

    moves_data: bool
    """False for local layout changes, which need no communication."""
    ring_passes: int
    """How many times a ring algorithm passes the charged bytes around (all_reduce: 2);
    0 for a local copy."""
    charged: Charged
    transfer: Callable[[Attrs, Sharding, MeshShape], Sharding]
    """The layout it makes of its operand's on a mesh; ValueError where it does not apply
    (pending reductions are applied and added in mesh-dim order, see `Sharding`)."""
    local_shape: Callable[[Attrs, Shape, MeshShape], Shape]
    """Its result's per-device shape from its operand's."""
    moves: Callable[[Sharding, MoveContext], Iterator[Move]]
    """Every way it applies to a layout, in the planner's tie-breaking order."""

    def charged_bytes(self, in_bytes: int, out_bytes: int) -> int:
        return in_bytes if self.charged is Charged.INPUT else out_bytes
