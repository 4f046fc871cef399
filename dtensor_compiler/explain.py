"""`Collective` records of a compiled program, and their table: what, over which mesh dims,
how many bytes, how long under the cost model, and why; and the table of what runs each
compute step on a backend that generates kernels. Shared by `Lowered.explain` and
`dtc explain`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field

from dtensor_compiler.ir import reasons
from dtensor_compiler.ir.printer import OpText, format_reason, format_seconds
from dtensor_compiler.runtime.backends import KernelRun

HEADERS = ("#", "op", "kind", "mesh dims", "bytes", "time", "why")
KERNEL_HEADERS = ("#", "kernel", "runs on", "ops", "how")
_RIGHT_ALIGNED = {"#", "bytes", "time"}


@dataclass(frozen=True, repr=False)
class Collective:
    """One collective of a compiled program. Its `reason` and `op` texts are rendered when
    first read (most compiles never read them), from what the op was when the record was
    made."""

    kind: str
    """``all_gather``, ``all_reduce``, ``reduce_scatter`` or ``all_to_all``."""
    mesh_dims: tuple[str, ...]
    bytes: int
    """Size of its per-device result buffer."""
    seconds: float
    """The cost model's estimate."""
    line: OpText = field(repr=False)
    """The op's printed line, not yet rendered."""

    @functools.cached_property
    def reason(self) -> str:
        """Why it is there, and the user's source line that made it necessary."""
        why, loc = self.line.why, self.line.loc
        reason = "no reason recorded" if why is None else format_reason(why)
        if loc is not None and (why is None or loc not in reasons.locations(why)):
            reason += f" at {loc}"
        return reason

    @functools.cached_property
    def op(self) -> str:
        """Its line in the printed IR."""
        return self.line.render()

    def __repr__(self) -> str:
        return (f"Collective(kind={self.kind!r}, mesh_dims={self.mesh_dims!r}, "
                f"bytes={self.bytes!r}, seconds={self.seconds!r}, reason={self.reason!r}, "
                f"op={self.op!r})")


def format_bytes(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        out = [c.rjust(w) if h in _RIGHT_ALIGNED else c.ljust(w)
               for h, c, w in zip(headers, cells, widths)]
        return "  ".join(out).rstrip()

    return "\n".join([line(headers), *(line(r) for r in rows)]) + "\n"


def explain_table(records: Sequence[Collective]) -> str:
    """One row per collective in program order, then a line of totals."""
    rows = [(str(i), r.op.split(" = ", 1)[0], r.kind, ", ".join(r.mesh_dims),
             format_bytes(r.bytes), format_seconds(r.seconds), r.reason)
            for i, r in enumerate(records, 1)]
    table = format_table(HEADERS, rows) if rows else ""
    noun = "collective" if len(records) == 1 else "collectives"
    total = (f"total: {len(records)} {noun}, {format_bytes(sum(r.bytes for r in records))}, "
             f"{format_seconds(sum(r.seconds for r in records))}\n")
    return table + total


def kernels_table(backend: str, runs: Sequence[KernelRun]) -> str:
    """One row per compute step in program order (a generated kernel, or an op outside the
    templates and what computes it), then a count per runner."""
    rows = [(str(i), r.name, r.runs_on, ", ".join(r.ops), r.detail)
            for i, r in enumerate(runs, 1)]
    counts: dict[str, int] = {}
    for r in runs:
        counts[r.runs_on] = counts.get(r.runs_on, 0) + 1
    total = ", ".join(f"{n} {runs_on}" for runs_on, n in counts.items())
    return (f"compute steps on the {backend} backend:\n" + format_table(KERNEL_HEADERS, rows)
            + f"total: {total}\n")
