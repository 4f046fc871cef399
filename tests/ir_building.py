"""Building small modules by hand for pass and runtime tests."""

from __future__ import annotations

from dtensor_compiler.ir.builder import Builder
from dtensor_compiler.ir.core import Function, Level, Module, Value
from dtensor_compiler.ir.opdef import InferContext
from dtensor_compiler.ir.sharding import MeshShape, Sharding
from dtensor_compiler.ir.types import TensorType


def new_module(mesh: MeshShape, args: dict[str, tuple[str, tuple[int, ...], Sharding]],
               level: Level = Level.GLOBAL) -> tuple[Module, Builder, list[Value]]:
    """An empty `@main` with arguments ``name: (dtype, shape, sharding)`` and a builder that
    appends to it; set the results with ``module.main.set_results([...])``."""
    values = [Value(TensorType(d, shape, s), name_hint=n) for n, (d, shape, s) in args.items()]
    func = Function("main", values)
    module = Module(mesh, [func], level=level)
    return module, Builder(func, InferContext(mesh, level)), values
