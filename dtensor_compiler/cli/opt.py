"""`dtc opt FILE.dtir -p PIPELINE [--stage NAME]`: parse IR text, run passes, print the result.

Like ``mlir-opt``: the input is verified before the first pass and after every pass,
``--print-after-all`` writes a dump after every pass to stderr, and the final IR goes to
stdout; ``--stage NAME`` prints the IR after the pass NAME instead (``input``: as parsed,
``final``: after the last pass, the default). ``//`` comments (the RUN and CHECK lines of
golden files) are skipped by the parser, so error line numbers point into the file as written.
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
    p.add_argument("--stage", metavar="NAME", default="final",
                   help="print the IR after this pass of the pipeline instead of the final IR "
                        "(input: as parsed; final: the default)")
    p.add_argument("--locations", action="store_true", help="print source locations")
    p.set_defaults(handler=run)


def stage_index(pm: PassManager, stage: str) -> int:
    """Where `stage` is in ``input`` followed by the pipeline's passes; -1 for ``final``."""
    names = ["input"] + [p.name for p in pm.passes]
    if stage == "final":
        return -1
    if stage not in names:
        raise UsageError(f"unknown stage {stage!r}; stages are: {', '.join(names + ['final'])}")
    if names.count(stage) > 1:
        raise UsageError(f"{stage} runs {names.count(stage)} times in the pipeline; "
                         f"--stage needs a pass that runs once")
    return names.index(stage)


def read_input(name: str) -> str:
    try:
        if name == "-":
            return sys.stdin.buffer.read().decode("utf-8")
        path = Path(name)
        if not path.is_file():
            raise UsageError(f"{name}: no such file")
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        where = "<stdin>" if name == "-" else name
        raise UsageError(f"{where}: not UTF-8 text (byte {e.start}: {e.reason})") from None


def run(args: argparse.Namespace) -> int:
    text = read_input(args.input)
    where = "<stdin>" if args.input == "-" else args.input
    try:
        pm = PassManager.parse(args.pipeline, keep_ir=args.stage != "final",
                               locations=args.locations, print_after_all=args.print_after_all,
                               out=sys.stderr)
    except PassError as e:
        raise UsageError(str(e)) from e
    index = stage_index(pm, args.stage)
    try:
        module = parse_module(text)
    except IRParseError as e:
        raise CheckFailed(f"{where}: {str(e).splitlines()[0]}") from e
    try:
        pm.run(module, input_stage="input" if pm.keep_ir else None)
    except VerificationError as e:
        if e.source is None:  # an op a pass made
            raise
        line, column = e.source
        raise CheckFailed(f"{where}: line {line}, column {column}: {str(e).splitlines()[0]}"
                          ) from e
    kept = pm.stages[index].ir if pm.keep_ir else None
    sys.stdout.write(kept if kept is not None else print_module(module, locations=args.locations))
    return EXIT_OK
