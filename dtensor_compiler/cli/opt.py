"""`dtc opt FILE.dtir -p PIPELINE`: parse IR text, run passes, print the result.

Like ``mlir-opt``: the input is verified before the first pass and after every pass,
``--print-after-all`` writes a dump after every pass to stderr, and the final IR goes to
stdout. ``//`` comments (the RUN and CHECK lines of golden files) are skipped by the parser,
so error line numbers point into the file as written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import dtensor_compiler.passes  # noqa: F401  (registers the passes)
from dtensor_compiler.cli.usage import EXIT_OK, CheckFailed, UsageError
from dtensor_compiler.errors import IRParseError, PassError, VerificationError
from dtensor_compiler.ir.parser import parse_module
from dtensor_compiler.ir.printer import print_module
from dtensor_compiler.pass_manager import PassManager


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("opt", parents=[common], help="run passes over IR text",
                       description="Parse IR text, run a pass pipeline over it and print the "
                                   "result.")
    p.add_argument("input", metavar="FILE.dtir", help="IR text; - reads stdin")
    p.add_argument("-p", "--pipeline", default="", metavar="PIPELINE",
                   help="comma-separated passes, options in braces, e.g. "
                        "'simplify{fold-limit=64},propagate-layouts' (default: none, only "
                        "parse, verify and print)")
    p.add_argument("--print-after-all", action="store_true",
                   help="write the IR after every pass to stderr")
    p.add_argument("--locations", action="store_true", help="print source locations")
    p.set_defaults(handler=run)


def read_input(name: str) -> str:
    if name == "-":
        return sys.stdin.read()
    path = Path(name)
    if not path.is_file():
        raise UsageError(f"{name}: no such file")
    return path.read_text(encoding="utf-8")


def run(args: argparse.Namespace) -> int:
    text = read_input(args.input)
    where = "<stdin>" if args.input == "-" else args.input
    try:
        pm = PassManager.parse(args.pipeline, keep_ir=False,
                               print_after_all=args.print_after_all, out=sys.stderr)
    except PassError as e:
        raise UsageError(str(e)) from e
    try:
        module = parse_module(text)
    except IRParseError as e:
        raise CheckFailed(f"{where}: {str(e).splitlines()[0]}") from e
    try:
        pm.run(module)
    except VerificationError as e:
        if e.source is None:  # an op a pass made
            raise
        line, column = e.source
        raise CheckFailed(f"{where}: line {line}, column {column}: {str(e).splitlines()[0]}"
                          ) from e
    sys.stdout.write(print_module(module, locations=args.locations))
    return EXIT_OK
