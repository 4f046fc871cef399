"""`dtc explain FILE.py:FUNC`: a table of every collective, what it costs and why it is there.

One row per data-moving collective in program order, as the IR holds them just before
``localize``: the value it defines, its kind, the mesh dims it runs over, the bytes of its
per-device result buffer, the cost model's time for it, and the reason with the user's
source line; then the totals.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from dtensor_compiler.cli import target
from dtensor_compiler.cli.usage import EXIT_OK

HEADERS = ("#", "op", "kind", "mesh dims", "bytes", "time", "why")
_RIGHT_ALIGNED = {"#", "bytes", "time"}


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("explain", parents=[common], help="list every collective and its cost",
                       description="Print every collective of a compiled function: kind, mesh "
                                   "dims, bytes, estimated time and why it is needed.")
    target.add_target_arguments(p)
    p.set_defaults(handler=run)


def format_bytes(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def format_seconds(s: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3)):
        if s >= scale:
            return f"{s / scale:.1f} {unit}"
    return f"{s * 1e6:.1f} us"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        out = [c.rjust(w) if h in _RIGHT_ALIGNED else c.ljust(w)
               for h, c, w in zip(headers, cells, widths)]
        return "  ".join(out).rstrip()

    return "\n".join([line(headers), *(line(r) for r in rows)]) + "\n"


def run(args: argparse.Namespace) -> int:
    records = target.lower(args).collectives()
    rows = [(str(i), r.op.split(" = ", 1)[0], r.kind, ", ".join(r.mesh_dims), format_bytes(r.bytes),
             format_seconds(r.seconds), r.reason) for i, r in enumerate(records, 1)]
    if rows:
        print(format_table(HEADERS, rows), end="")
    total_bytes = sum(r.bytes for r in records)
    total_seconds = sum(r.seconds for r in records)
    noun = "collective" if len(records) == 1 else "collectives"
    print(f"total: {len(records)} {noun}, {format_bytes(total_bytes)}, "
          f"{format_seconds(total_seconds)}")
    return EXIT_OK
