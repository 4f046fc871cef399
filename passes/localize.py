"""localize: turn global shapes into per-device shapes.

Expects: a global-shape module in which every value has a sharding that fits the mesh, and
every op is legal in a local module (no `relayout` op is left: run insert-collectives first;
padding read as data is masked: run mask-padding first).

Guarantees: the module is at the `local` level and every value's type holds its per-device
shape, with its sharding kept. A dim its shards do not divide gets the room of its blocks,
``ceil(n / k)``, and records its global extent (``f32[3/10]``, see `TensorType`).
Shape-valued attributes are rewritten to local terms by the op's localize hook
(`OpDef.localize`; a `slice` may cut only unsharded dims, and a full-range slice of a sharded
dim becomes the full local range). Ops whose shape comes from their
declared result type (`reshape`, `broadcast_to`, `full`, `iota`, `astype`, `constant`) get the
local type; a `constant` keeps its GLOBAL value, which the runtime splits per device. Every
layout is checked to fit the mesh first. Nothing is changed when the pass fails.

```
%0 = matmul %x, %w : f32[512,1024] @ {dp, tp}            // mesh<dp=2, tp=4>
%0 = matmul %x, %w : f32[256,256] @ {dp, tp}             // after localize
```
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from dtensor_compiler.errors import PassError
from dtensor_compiler.ir import opdef
from dtensor_compiler.ir.attrs import Attr
from dtensor_compiler.ir.core import Function, Level, Module, Operation, Value
from dtensor_compiler.ir.printer import Namer
from dtensor_compiler.ir.sharding import MeshShape
from dtensor_compiler.ir.types import TensorType
from dtensor_compiler.pass_manager import ModulePass, PassContext, register_pass


@register_pass
@dataclass(frozen=True)
class LocalizePass(ModulePass):
    """Rewrite a global-shape module into per-device shapes."""

    name = "localize"
    produces = Level.LOCAL

    def apply(self, module: Module, ctx: PassContext) -> None:
        rewrites = [_Localizer(func, module.mesh).plan() for func in module.functions]
        for types, attrs in rewrites:
            for value, local in types:
                value.type = local
            for op, new_attrs in attrs:
                op.attrs.update(new_attrs)
        module.level = Level.LOCAL


class _Localizer:
    """Works out the local type of every value and the local attributes of every op of one
    function, without changing it."""

    def __init__(self, func: Function, mesh: MeshShape) -> None:
        self.func = func
        self.mesh = mesh
        self._local: dict[TensorType, TensorType] = {}
        """Checked global type -> local type; the layers of a deep model repeat few types."""

    @functools.cached_property
    def name(self) -> Namer:
        """Printed value names, for messages only (built on the first error)."""
        return Namer(self.func)

    def plan(self) -> tuple[list[tuple[Value, TensorType]],
                            list[tuple[Operation, dict[str, Attr]]]]:
        types = [(v, self.local_type(v)) for v in self.func.values()]
        attrs = []
        for op in self.func.ops:
            definition = opdef.lookup(op.name)
            if Level.LOCAL not in definition.levels:
                raise self.error(op, f"{op.name} is left in the module but has no local form; "
                                     "run insert-collectives before localize")
            if definition.localize is not None:
                try:
                    attrs.append((op, definition.localize(op, self.mesh)))
                except ValueError as e:
                    raise self.error(op, str(e)) from None
        return types, attrs

    def error(self, op: Operation | None, message: str) -> PassError:
        where = f"{op.loc}: " if op is not None and op.loc is not None else ""
        return PassError(f"{where}localize @{self.func.name}: {message}")

    def local_type(self, value: Value) -> TensorType:
        """The per-device type of `value`; PassError when its layout does not fit."""
        t = value.type
        local = self._local.get(t)
        if local is None:
            local = self._local[t] = self._check_local_type(value)
        return local

    def _check_local_type(self, value: Value) -> TensorType:
        t = value.type
        sharding = t.sharding
        if sharding is None:
            raise self.error(value.owner, f"{self.name(value)} has no layout; run "
                                          "propagate-layouts first")
        problems = sharding.problems(self.mesh)
        if sharding.rank != t.rank:
            problems.insert(0, f"layout has rank {sharding.rank}, the tensor has rank {t.rank}")
        if problems:
            raise self.error(value.owner, f"layout of {self.name(value)} {sharding.text()}: "
                                          + "; ".join(problems))
        return t.localized(self.mesh)
