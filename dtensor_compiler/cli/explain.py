"""`dtc explain FILE.py:FUNC`: a table of every collective, what it costs and why it is there.

One row per data-moving collective in program order, as the IR holds them just before
``localize``: the value it defines, its kind, the mesh dims it runs over, the bytes of its
per-device result buffer, the cost model's time for it, and the reason with the user's
source line; then the totals. For a function compiled for a backend that generates kernels
(``backend="triton"``), then a table of what runs each compute step: a generated kernel
(its name, ops and template) or an op outside the templates and what computes it.
"""

from __future__ import annotations

import argparse

from dtensor_compiler.cli import target
from dtensor_compiler.cli.usage import EXIT_OK


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("explain", parents=[common], help="list every collective and its cost",
                       description="Print every collective of a compiled function: kind, mesh "
                                   "dims, bytes, estimated time and why it is needed.")
    target.add_target_arguments(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    print(target.lower(args).explain(), end="")
    return EXIT_OK
