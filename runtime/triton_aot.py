"""Compile generated Triton kernels ahead of time for GPU targets, on any machine.

The interpreter that runs kernels without a GPU accepts code a GPU compiler rejects (a dot
with K < 16, fp16 math functions, kernels defined by ``exec``), so CI compiles every kernel
the tests generated for real targets too: ``python -m dtensor_compiler.runtime.triton_aot
DIR [--arch 90 --arch 80]`` imports each generated kernel file in DIR (the ``kernels``
directory of a cache, `triton_backend.cache_dir`) and runs ``triton.compile`` down to a
cubin for each CUDA architecture, with the argument types and block sizes the file
declares (`SIGNATURE`, `AOT_CONSTANTS`; by default a `BLOCK` of 1024). It prints one line
per kernel and target and exits 1 naming every kernel that failed. It must run without
``TRITON_INTERPRET`` (it refuses otherwise), as a process of its own.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path


def compile_file(path: Path, archs: list[int]) -> list[str]:
    """Compile the kernel of one generated file for every arch; the failures, as lines."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    spec = importlib.util.spec_from_file_location(f"dtc_aot.{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # a file that does not even import
        return [f"{path.name}: {type(e).__name__}: {e}"]
    kernels = [v for v in vars(module).values() if isinstance(v, triton.runtime.JITFunction)]
    signature = dict(getattr(module, "SIGNATURE", {}))
    constants = dict(getattr(module, "AOT_CONSTANTS", {"BLOCK": 1024}))
    failures = []
    for kernel in kernels:
        types = {a: signature.get(a, "constexpr" if a in constants else "i64")
                 for a in kernel.arg_names}
        for arch in archs:
            start = time.perf_counter()
            try:
                compiled = triton.compile(ASTSource(kernel, types, constants),
                                          target=GPUTarget("cuda", arch, 32))
                size = len(compiled.asm["cubin"])
                print(f"{kernel.__name__}: sm_{arch} cubin {size} bytes "
                      f"({time.perf_counter() - start:.2f} s)")
            except Exception as e:
                failures.append(f"{kernel.__name__} ({path.name}) on sm_{arch}: {_why(e)}")
    return failures


def _why(error: Exception) -> str:
    """A compile error in one line: Triton's error, then where in the kernel it is (its
    message starts with the place, shows the source line, and ends with the error)."""
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    if len(lines) == 1:
        return lines[0]
    return f"{lines[-1].strip()} ({lines[0].strip().rstrip(':')})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dtensor_compiler.runtime.triton_aot",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, help="a directory of generated kernel files")
    parser.add_argument("--arch", type=int, action="append",
                        help="CUDA compute capability as a number (default: 90 and 80)")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("unset TRITON_INTERPRET: the interpreter does not compile kernels")
    files = sorted(args.directory.glob("*.py"))
    if not files:
        parser.error(f"no kernel files in {args.directory}")
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # pinned: 3.10 changes the default
    failures = [line for path in files for line in compile_file(path, args.arch or [90, 80])]
    for line in failures:
        print(f"FAILED {line}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
