"""Pass infrastructure: the `ModulePass` base, the pass registry and the `PassManager`.

A pass is a frozen dataclass subclassing `ModulePass` with a kebab-case class attribute `name`
and the module levels it accepts (`requires`) and leaves (`produces`); its dataclass fields are
its options, written in a pipeline as ``name{field=value,...}``:

    PassManager.parse("simplify,propagate-layouts,insert-collectives{latency=2e-6}")

The manager refuses to run a pass on a module of a level it does not accept, verifies the
module after every pass (when `verify` is set), times each pass, and
keeps a `Stage` per pass: the pass name, its seconds, and the printed IR after it when
`keep_ir` is set. `print_after_all` writes MLIR-style dumps to a stream as it goes.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, TextIO, TypedDict, Unpack

from dtensor_compiler.cost import DEFAULT_COST_MODEL, CostModel
from dtensor_compiler.errors import DTensorError, PassError
from dtensor_compiler.ir.core import Level, Module
from dtensor_compiler.ir.printer import print_module
from dtensor_compiler.ir.verifier import verify_module


@dataclass(frozen=True)
class PassContext:
    """What every pass may read besides the module."""

    cost_model: CostModel = DEFAULT_COST_MODEL


@dataclass(frozen=True)
class ModulePass:
    """Base class. Subclasses set `name` and implement `apply`, mutating the module."""

    name: ClassVar[str] = ""
    requires: ClassVar[frozenset[Level]] = frozenset({Level.GLOBAL})
    """The module levels the pass accepts."""
    produces: ClassVar[Level | None] = None
    """The level of the module after the pass; None: the level it had."""

    def apply(self, module: Module, ctx: PassContext) -> bool | None:
        """Mutate `module`. A pass may return False to say it left the module as it was; the
        manager then keeps the previous stage's printed IR rather than printing it again."""
        raise NotImplementedError

    def text(self) -> str:
        """The pass as pipeline text; `parse_pass` reads it back."""
        opts = [f"{f.name.replace('_', '-')}={_option_text(getattr(self, f.name))}"
                for f in dataclasses.fields(self) if getattr(self, f.name) != f.default]
        return self.name + ("{" + ",".join(opts) + "}" if opts else "")


def _option_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


_REGISTRY: dict[str, type[ModulePass]] = {}


def register_pass(cls: type[ModulePass]) -> type[ModulePass]:
    """Class decorator: make a pass available to pipelines by its `name`."""
    assert re.fullmatch(r"[a-z][a-z0-9-]*", cls.name), f"bad pass name {cls.name!r}"
    _REGISTRY[cls.name] = cls
    return cls


def registered_passes() -> dict[str, type[ModulePass]]:
    return dict(_REGISTRY)


def _convert(value: str, typ: object, where: str) -> object:
    kinds = {"int": int, "float": float, "str": str, int: int, float: float, str: str}
    if typ in ("bool", bool):
        if value not in ("true", "false"):
            raise PassError(f"{where}: expected true or false, got {value!r}")
        return value == "true"
    conv = kinds.get(typ)
    if conv is None:
        raise PassError(f"{where}: option type {typ} cannot be set from a pipeline")
    try:
        return conv(value)
    except ValueError:
        raise PassError(f"{where}: {value!r} is not a valid {conv.__name__}") from None


def parse_pass(text: str) -> ModulePass:
    m = re.fullmatch(r"\s*([a-z][a-z0-9-]*)\s*(?:\{(.*)\})?\s*", text)
    if not m:
        raise PassError(f"malformed pass {text.strip()!r} in pipeline")
    name, opts = m.group(1), m.group(2)
    if name not in _REGISTRY:
        known = ", ".join(sorted(_REGISTRY))
        raise PassError(f"unknown pass {name!r}; known passes: {known}")
    cls = _REGISTRY[name]
    fields = {f.name.replace("_", "-"): f for f in dataclasses.fields(cls)}
    kwargs: dict[str, object] = {}
    for item in filter(None, (s.strip() for s in (opts or "").split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in fields:
            valid = ", ".join(sorted(fields)) or "none"
            raise PassError(f"pass {name!r} has no option {key!r} (options: {valid})")
        f = fields[key]
        kwargs[f.name] = _convert(value.strip(), f.type, f"{name}{{{key}}}")
    return cls(**kwargs)


def split_pipeline(text: str) -> list[str]:
    """Split on commas that are not inside ``{...}``."""
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += ch == "{"
        depth -= ch == "}"
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        out.append(cur)
    return out


@dataclass(frozen=True)
class Stage:
    """One step of a compilation: which pass ran, how long it took, the IR after it."""

    name: str
    seconds: float
    ir: str | None


class _Options(TypedDict, total=False):
    """The keyword arguments of `PassManager`, for `PassManager.parse` to pass on."""

    verify: bool
    keep_ir: bool
    locations: bool
    print_after_all: bool
    out: TextIO | None
    ctx: PassContext | None
    before_each: Callable[[ModulePass, Module], None] | None


class PassManager:
    def __init__(self, passes: list[ModulePass], *, verify: bool = True, keep_ir: bool = True,
                 locations: bool = False, print_after_all: bool = False,
                 out: TextIO | None = None,
                 ctx: PassContext | None = None,
                 before_each: Callable[[ModulePass, Module], None] | None = None) -> None:
        self.passes = passes
        self.before_each = before_each
        """Called with each pass and the module just before the pass runs."""
        self.verify = verify
        self.keep_ir = keep_ir
        self.locations = locations
        """Print the kept and dumped IR with source locations."""
        self.print_after_all = print_after_all
        self.out = out
        self.ctx = ctx or PassContext()
        self.stages: list[Stage] = []
        self._printed: str | None = None
        """The IR the last stage printed."""

    @staticmethod
    def parse(pipeline: str, **kwargs: Unpack[_Options]) -> PassManager:
        return PassManager([parse_pass(p) for p in split_pipeline(pipeline)], **kwargs)

    def text(self) -> str:
        return ",".join(p.text() for p in self.passes)

    def _record(self, name: str, seconds: float, module: Module, unchanged: bool = False
                ) -> None:
        text = None
        if self.keep_ir or self.print_after_all:
            text = self._printed if unchanged and self._printed is not None else print_module(
                module, self.locations)
        self._printed = text
        self.stages.append(Stage(name, seconds, text if self.keep_ir else None))
        if self.print_after_all:
            stream = self.out or sys.stdout
            stream.write(f"// -----// IR Dump After {name} //----- //\n{text}\n")

    def run(self, module: Module, input_stage: str | None = None) -> Module:
        """Run every pass in order on `module` (in place) and return it."""
        if self.verify:
            verify_module(module)
        if input_stage is not None:
            self._record(input_stage, 0.0, module)
        for p in self.passes:
            level = module.level
            if level not in p.requires:
                wanted = " or ".join(sorted(lv.value for lv in p.requires))
                raise PassError(f"{p.name} expects a {wanted} module, but this one is "
                                f"{level.value}")
            if self.before_each is not None:
                self.before_each(p, module)
            start = time.perf_counter()
            try:
                changed = p.apply(module, self.ctx)
            except DTensorError:
                raise
            except Exception as e:
                done = ", ".join(s.name for s in self.stages) or "none"
                raise PassError(f"pass {p.name!r} failed (after: {done}): "
                                f"{type(e).__name__}: {e}") from e
            expected = p.produces or level
            assert module.level is expected, (
                f"{p.name} left a {module.level.value} module, it declares {expected.value}")
            if self.verify:
                verify_module(module, after=p.name)
            self._record(p.name, time.perf_counter() - start, module, unchanged=changed is False)
        return module
