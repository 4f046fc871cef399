"""`dtc ckpt ls|verify|export PREFIX`: look into a checkpoint without a mesh.

    dtc ckpt ls PREFIX [--slices]      the tensors: dtype, shape, saved layout and mesh,
                                       slices and bytes; --slices lists every stored slice
    dtc ckpt verify PREFIX             read every data file and check every checksum; exit 1
                                       naming each corrupt, missing or truncated part
    dtc ckpt export PREFIX OUT         plain safetensors: OUT.safetensors is one file, any
                                       other OUT a directory of shards (--max-shard-size)
                                       with model.safetensors.index.json

PREFIX is the checkpoint's path without ``.index.json`` (``ckpt/model-3``).
"""

from __future__ import annotations

import argparse
import re

from dtensor_compiler.checkpoint import inspect
from dtensor_compiler.cli.usage import EXIT_FAILED, EXIT_OK, UsageError
from dtensor_compiler.explain import format_bytes, format_table
from dtensor_compiler.runtime.checkpoint_index import index_path, load_index

_SIZE = re.compile(r"(\d+)\s*([KMGT]?)(i?B)?", re.I)


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("ckpt", parents=[common], help="list, verify or export a checkpoint",
                       description="Look into a dtensor-compiler checkpoint.")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = actions.add_parser("ls", parents=[common], help="table of the saved tensors")
    ls.add_argument("prefix", metavar="PREFIX")
    ls.add_argument("--slices", action="store_true", help="list every stored slice too")
    ls.set_defaults(handler=run_ls)
    verify = actions.add_parser("verify", parents=[common], help="check every checksum")
    verify.add_argument("prefix", metavar="PREFIX")
    verify.set_defaults(handler=run_verify)
    export = actions.add_parser("export", parents=[common],
                                help="write the tensors as plain safetensors")
    export.add_argument("prefix", metavar="PREFIX")
    export.add_argument("out", metavar="OUT",
                        help="a .safetensors file, or a directory for sharded output")
    export.add_argument("--max-shard-size", default="2GiB", type=_bytes,
                        help="largest shard of a directory export (default 2GiB)")
    export.set_defaults(handler=run_export)


def _bytes(text: str) -> int:
    m = _SIZE.fullmatch(text.strip())
    if m is None or int(m.group(1)) == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 500MB or 2GiB")
    return int(m.group(1)) * 1024 ** "_KMGT".index(m.group(2).upper() or "_")


def _check_prefix(prefix: str) -> None:
    if not index_path(prefix).exists():
        raise UsageError(f"no checkpoint at {prefix} ({index_path(prefix)} does not exist)")


def run_ls(args: argparse.Namespace) -> int:
    _check_prefix(args.prefix)
    rows = inspect.tensor_rows(args.prefix)
    table = [(r.name, r.dtype, "[" + ",".join(map(str, r.shape)) + "]", r.layout,
              str(r.slices), format_bytes(r.nbytes)) for r in rows]
    print(format_table(("tensor", "dtype", "shape", "layout", "slices", "size"), table), end="")
    meshes = sorted({r.mesh for r in rows})
    print(f"{len(rows)} tensors, {format_bytes(sum(r.nbytes for r in rows))}, saved on "
          f"{', '.join(meshes) or 'no mesh'}")
    if args.slices:
        index = load_index(args.prefix)
        slices = [(name, s.box.text(), s.file, f"{s.offset}..{s.offset + s.nbytes}")
                  for name, t in sorted(index.tensors.items()) for s in t.slices]
        print(format_table(("tensor", "slice", "file", "bytes"), slices), end="")
    return EXIT_OK


def run_verify(args: argparse.Namespace) -> int:
    _check_prefix(args.prefix)
    problems = inspect.verify(args.prefix)
    for p in problems:
        print(f"CORRUPT: {p}")
    if problems:
        print(f"{args.prefix}: {len(problems)} problems")
        return EXIT_FAILED
    index = load_index(args.prefix)
    print(f"{args.prefix}: ok ({len(index.tensors)} tensors in {len(index.files)} files, every "
          "checksum verified)")
    return EXIT_OK


def run_export(args: argparse.Namespace) -> int:
    _check_prefix(args.prefix)
    try:
        files = inspect.export(args.prefix, args.out, args.max_shard_size)
    except ValueError as e:
        raise UsageError(str(e)) from None
    for f in files:
        print(f)
    return EXIT_OK
