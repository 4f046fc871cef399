"""What one collective kind is: its layout transfer, local shape, planner moves and cost shape.

Every op that changes a value's layout (``all_reduce``, ``reduce_scatter``, ``all_gather``,
``all_to_all``, and the local ``local_slice`` and ``make_partial``) carries a `CollectiveDef`
in its op definition (`ir/ops/collectives.py`). Everything else reads it from there:

- the verifier checks a collective's result layout against `transfer`;
- shape inference on localized IR takes the result's block shape from `transfer`;
- the relayout planner (`planner.py`) takes its edges from `moves`;
- the cost model (`cost.py`) prices it from `ring_passes`, `algorithms` and `charged` bytes;
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
    """Which per-device buffer a collective's time is proportional to. Where blocks have
    padding, the ring moves whole padded blocks: an all_gather moves every device's operand
    block (`GATHERED`), not its trimmed result, and a reduce_scatter every device's result
    block (`SCATTERED`); for even blocks these are the result and the operand."""

    INPUT = "input"
    OUTPUT = "output"
    GATHERED = "every device's input"
    SCATTERED = "every device's output"


class Algorithm(Enum):
    """How a collective may run over a group of n devices (`cost.py` prices each)."""

    RING = "ring"
    """n - 1 steps per pass, each moving 1/n of the charged buffer."""
    HALVING_DOUBLING = "halving and doubling"
    """ceil(log2 n) steps per pass for the ring's bytes: recursive halving (reduce_scatter),
    doubling (all_gather), both (all_reduce)."""
    WHOLE_EXCHANGE = "whole exchange"
    """ceil(log2 n) steps, each exchanging the whole buffer (all_reduce by recursive
    doubling: the fastest for the smallest messages)."""
    BRUCK = "bruck"
    """ceil(log2 n) steps, each moving half the buffer (all_to_all)."""


@dataclass(frozen=True)
class MoveContext:
    """What the planner knows besides the current layout when it asks for moves."""

    mesh: MeshShape
    keep: frozenset[str]
    """Mesh dims whose pending reduction the target keeps (not to be reduced)."""
    wanted: tuple[tuple[str, ReduceOp], ...]
    """The pending reductions of the target layout."""
    shape: Shape
    """The global shape of the value being laid out."""

    @property
    def mesh_names(self) -> tuple[str, ...]:
        return self.mesh.names


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
    moves: Callable[[Sharding, MoveContext], Iterator[Move]]
    """Every way it applies to a layout, in the planner's tie-breaking order."""
    reshapes: bool = True
    """Whether it changes the block shape (then a communicator is given the result's)."""
    algorithms: frozenset[Algorithm] = frozenset({Algorithm.RING})
    """The algorithms that may run it; the cost model charges the fastest."""

    def charged_bytes(self, in_bytes: int, out_bytes: int, group: int) -> int:
        """The charged bytes of one device, in a group of `group` devices."""
        return {Charged.INPUT: in_bytes, Charged.OUTPUT: out_bytes,
                Charged.GATHERED: in_bytes * group, Charged.SCATTERED: out_bytes * group
                }[self.charged]
