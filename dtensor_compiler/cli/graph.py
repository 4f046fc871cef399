"""`dtc graph FILE.py:FUNC -o OUT`: draw the dataflow graph with layouts on the edges.

``OUT`` ending in ``.dot`` gets the DOT text; ``.svg``, ``.png`` or ``.pdf`` are rendered
with Graphviz's ``dot``, and without it the command fails (exit 2) saying to install graphviz
or to write ``.dot``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path

from dtensor_compiler.cli import target
from dtensor_compiler.cli.usage import EXIT_OK, CheckFailed, UsageError
from dtensor_compiler.ir.parser import parse_module

RENDERED_FORMATS = ("svg", "png", "pdf")


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("graph", parents=[common], help="draw the dataflow graph",
                       description="Draw the dataflow graph of a function at a stage: layouts "
                                   "on the edges, collectives highlighted.")
    target.add_target_arguments(p)
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="output file: .dot, or .svg/.png/.pdf (needs graphviz)")
    p.add_argument("--stage", metavar="NAME",
                   help="stage to draw (default: the last one with global shapes, where every "
                        "collective is in place)")
    p.set_defaults(handler=run)


def _render(dot: str, out: Path) -> None:
    fmt = out.suffix.lstrip(".")
    exe = shutil.which("dot")
    if exe is None:
        raise UsageError(f"cannot draw {out}: graphviz's 'dot' is not installed; install "
                         f"graphviz or write the DOT text with -o {out.with_suffix('.dot')}")
    done = subprocess.run([exe, f"-T{fmt}", "-o", str(out)], input=dot, text=True,
                          capture_output=True, check=False)
    if done.returncode != 0:
        raise CheckFailed(f"graphviz failed: {done.stderr.strip()}")


def run(args: argparse.Namespace) -> int:
    out = Path(args.output)
    fmt = out.suffix.lstrip(".")
    if fmt != "dot" and fmt not in RENDERED_FORMATS:
        raise UsageError(f"cannot draw {out}: the output must end in .dot, "
                         + ", ".join(f".{f}" for f in RENDERED_FORMATS))
    # networkx takes a third of dtc's start-up time, so only this subcommand imports it
    from dtensor_compiler.graph import dataflow_graph, to_dot

    lowered = target.lower(args)
    stage = lowered.global_stage if args.stage is None else target.stage_name(lowered,
                                                                                args.stage)
    module = parse_module(lowered.ir(stage))
    dot = to_dot(dataflow_graph(module.main))
    if fmt == "dot":
        out.write_text(dot, encoding="utf-8")
    else:
        _render(dot, out)
    return EXIT_OK
