"""``FILE.py:FUNC`` targets: load the user's file, find the compiled function, lower it.

The file runs as a module named ``dtc_target_<stem>`` with its own directory on ``sys.path``
(for its imports); its ``if __name__ == "__main__"`` block does not run.

The shapes of the inputs come from ``--shapes`` when given, else from the input specs the
function was compiled with (``dtc.compile(..., specs=(TensorSpec((512, 256)), ...))``).
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

from dtensor_compiler.cli.usage import CheckFailed, UsageError
from dtensor_compiler.compile import CompiledFunction, Lowered, TensorSpec
from dtensor_compiler.ir.types import DTYPE_NAMES, numpy_dtype

_SHAPE = re.compile(r"(\d+(?:x\d+)*)(?::([a-z0-9]+))?\Z")
SHAPES_HELP = ("input shapes, one per input, comma-separated; sizes joined by 'x', with an "
               "optional :dtype (default f32), e.g. 512x256,256x1024:f16")


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", metavar="FILE.py:FUNC",
                        help="a Python file and the name of a dtc-compiled function in it")
    parser.add_argument("--shapes", metavar="SHAPES", help=SHAPES_HELP)


def parse_shapes(text: str) -> tuple[TensorSpec, ...]:
    """``"512x256,256x1024:f16"`` → two TensorSpecs. Raises UsageError on anything else."""
    specs = []
    for item in text.split(","):
        m = _SHAPE.fullmatch(item.strip())
        if m is None:
            raise UsageError(f"bad --shapes entry {item.strip()!r}: expected sizes joined by "
                             "'x' with an optional :dtype, e.g. 512x256 or 512x256:f16")
        if m.group(2) is not None and m.group(2) not in DTYPE_NAMES:
            raise UsageError(f"bad --shapes entry {item.strip()!r}: unknown dtype "
                             f"{m.group(2)!r}; dtypes are {', '.join(DTYPE_NAMES)}")
        shape = tuple(int(s) for s in m.group(1).split("x"))
        specs.append(TensorSpec(shape, numpy_dtype(m.group(2) or "f32")))
    return tuple(specs)


def _load_module(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"dtc_target_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise UsageError(f"{path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        raise CheckFailed(f"{path}: running the file failed: {type(e).__name__}: {e}") from e
    finally:
        sys.path.remove(str(path.parent))
    return module


def load_function(target: str) -> CompiledFunction:
    """The dtc-compiled function a ``FILE.py:FUNC`` target names."""
    file, sep, name = target.rpartition(":")
    if not sep or not file or not name:
        raise UsageError(f"bad target {target!r}: expected FILE.py:FUNC")
    path = Path(file)
    if not path.is_file():
        raise UsageError(f"{file}: no such file")
    module = _load_module(path)
    compiled = [k for k, v in vars(module).items() if isinstance(v, CompiledFunction)]
    if not hasattr(module, name):
        known = ", ".join(sorted(compiled)) or "none"
        raise UsageError(f"{file} has no function {name!r} (dtc-compiled functions: {known})")
    fn = getattr(module, name)
    if not isinstance(fn, CompiledFunction):
        raise UsageError(f"{file}:{name} is not a dtc-compiled function; decorate it with "
                         "@dtc.compile(in_layouts=..., out_layouts=...)")
    return fn


def input_specs(fn: CompiledFunction, shapes: str | None,
                target: str) -> tuple[TensorSpec, ...]:
    if shapes is not None:
        return parse_shapes(shapes)
    if fn.specs is None:
        raise UsageError(f"{target} has no input specs: pass --shapes (e.g. "
                         "--shapes 512x256,256x1024) or compile it with specs=...")
    return fn.specs


def lower(args: argparse.Namespace) -> Lowered:
    """Load ``args.target`` and lower it for the shapes ``args`` gives (keeping source
    locations in the IR text where ``args.locations`` asks for them)."""
    fn = load_function(args.target)
    return fn.lower(*input_specs(fn, args.shapes, args.target),
                    locations=getattr(args, "locations", False))


def stage_name(lowered: Lowered, stage: str | None) -> str:
    """`stage`, checked against the stages of `lowered`; None or ``final`` means the last
    one."""
    if stage is None or stage == "final":
        return lowered.stages[-1]
    if stage not in lowered.stages:
        raise UsageError(f"unknown stage {stage!r}; stages are: "
                         f"{', '.join(lowered.stages + ['final'])}")
    return stage
