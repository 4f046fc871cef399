"""`dtc dump FILE.py:FUNC [--stage NAME | --print-after-all] [--locations]`: the IR at any stage.

Stages are ``trace`` and then the name of every pass of the default pipeline.
"""

from __future__ import annotations

import argparse
import sys

from dtensor_compiler.cli import target
from dtensor_compiler.cli.usage import EXIT_OK


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("dump", parents=[common], help="print the IR of a function at a stage",
                       description="Print the IR of a dtc-compiled function after a stage "
                                   "(default: the last one).")
    target.add_target_arguments(p)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--stage", metavar="NAME",
                       help="stage to print: trace or a pass name (see --list-stages)")
    which.add_argument("--print-after-all", action="store_true",
                       help="print the IR after every stage")
    which.add_argument("--list-stages", action="store_true", help="print the stage names")
    p.add_argument("--locations", action="store_true", help="print source locations")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    lowered = target.lower(args)
    if args.list_stages:
        print("\n".join(lowered.stages))
    elif args.print_after_all:
        for name in lowered.stages:
            sys.stdout.write(f"// -----// IR Dump After {name} //----- //\n{lowered.ir(name)}\n")
    else:
        sys.stdout.write(lowered.ir(target.stage_name(lowered, args.stage)))
    return EXIT_OK
