"""`dtc`: the command-line face of the compiler.

    dtc dump    FILE.py:FUNC      IR of a compiled function at any stage
    dtc opt     FILE.dtir -p P    parse IR text, run a pipeline, print the result
    dtc explain FILE.py:FUNC      every collective with its cost and the reason for it
    dtc graph   FILE.py:FUNC      dataflow graph with layouts on the edges
    dtc run     FILE.py:FUNC      run on the simulated mesh and compare with numpy
    dtc ckpt    ls|verify|export  look into a checkpoint: its tensors, its checksums, or
                                  its tensors as plain safetensors

Every subcommand lives in its own module with `add_parser(subparsers, common)`, which
registers its flags (`common` holds the shared ones), and `run(args) -> int`.
Errors print as one line (``dtc: error: ...``); `--debug` adds the traceback. Exit codes are
in `usage`.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence

from dtensor_compiler.cli import ckpt, dump, explain, graph, opt, run
from dtensor_compiler.cli.usage import EXIT_FAILED, EXIT_USAGE, CheckFailed, UsageError
from dtensor_compiler.errors import DTensorError

_SUBCOMMANDS = (dump, opt, explain, graph, run, ckpt)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full error with its traceback")
    parser = argparse.ArgumentParser(
        prog="dtc", parents=[common],
        description="Inspect, transform and run dtensor-compiler programs.",
        epilog="exit status: 0 success, 1 failed check (bad IR, compile error, wrong "
               "result), 2 bad usage")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in _SUBCOMMANDS:
        command.add_parser(sub, common)
    return parser


def _report(error: BaseException, debug: bool) -> None:
    if debug:
        traceback.print_exception(error)
        return
    lines = str(error).strip().splitlines()
    message = lines[0] if lines else type(error).__name__
    if not isinstance(error, (UsageError, CheckFailed, DTensorError)):
        message = f"{type(error).__name__}: {message} (internal error; rerun with --debug)"
    print(f"dtc: error: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run `dtc` with `argv` (default: the process arguments); returns the exit status.

    Bad flags exit through argparse with status 2, like any argparse program."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except UsageError as e:
        _report(e, getattr(args, "debug", False))
        return EXIT_USAGE
    except Exception as e:
        _report(e, getattr(args, "debug", False))
        return EXIT_FAILED
