"""Tracing a numpy function into an IR module.

`trace` calls the function once with one `TracedArray` per argument and records every numpy
operation as an op at the user's source line. The result is a module with one function in
global shapes: arguments carry the user's in_layouts (or no sharding), and every output with
an out_layout ends in a ``relayout`` op whose type carries it, so the user's layouts are pinned
and every other value is left for layout propagation.
"""

from __future__ import annotations

import inspect
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TypeGuard, cast

import numpy as np

from dtensor_compiler.errors import LayoutError, Location, TraceError, source_path
from dtensor_compiler.ir.core import Function, LayoutOrigin, Module, Value
from dtensor_compiler.ir.printer import format_reason
from dtensor_compiler.ir.reasons import OutLayout, Reason, UserRelayout
from dtensor_compiler.ir.sharding import MeshShape, Sharding
from dtensor_compiler.ir.types import TensorType
from dtensor_compiler.tracing.location import user_location
from dtensor_compiler.tracing.outputs import OutputTree, flatten, unflatten_each
from dtensor_compiler.tracing.recorder import PythonScalar, Recorder
from dtensor_compiler.tracing.tracer import TracedArray, unwrap


def function_name(fn: Callable) -> str:
    """An IR-safe name for `fn`: ``<lambda>`` becomes ``lambda``."""
    raw = getattr(fn, "__name__", type(fn).__name__)
    name = re.sub(r"\W+", "_", raw, flags=re.ASCII).strip("_") or "fn"  # (IR names: ASCII)
    return "fn_" + name if name[0].isdigit() else name


def is_traced(x: object) -> TypeGuard[TracedArray]:
    """True for an array inside a function being traced."""
    return isinstance(x, TracedArray)


_TRACING = threading.local()


def tracing_now() -> bool:
    """Whether this thread is tracing a function (its body is running)."""
    return getattr(_TRACING, "depth", 0) > 0


def _check_sharding(sharding: Sharding, value: Value, mesh: MeshShape, what: str,
                    loc: Location) -> None:
    problems = sharding.problems(mesh, value.type.shape)
    if problems:
        raise LayoutError(f"{loc}: {what} {sharding.text()} does not fit "
                          f"{value.type.text()}: " + "; ".join(problems))


def _relayout(rec: Recorder, value: Value, sharding: Sharding, why: Reason, origin: str,
              loc: Location | None = None) -> Value:
    loc = loc or user_location()
    _check_sharding(sharding, value, rec.mesh, format_reason(why), loc)
    result = rec.emit("relayout", [value], sharding=sharding, why=why, loc=loc)
    result.origin = LayoutOrigin(origin)
    return result


def traced_relayout(x: TracedArray, sharding: Sharding) -> TracedArray:
    """``dtc.relayout`` inside a traced function: a ``relayout`` op to `sharding`."""
    why = UserRelayout()
    result = _relayout(x.recorder, x.value, sharding, why, format_reason(why))
    return TracedArray(result, x.recorder)


def traced_relayout_like(x: TracedArray, like: TracedArray) -> TracedArray:
    """``dtc.relayout_like`` of two traced arrays: a ``relayout_like`` op."""
    result = x.recorder.emit("relayout_like", [x.value, like.value], why=UserRelayout())
    return TracedArray(result, x.recorder)


def traced_save(prefix: str, values: Mapping[str, TracedArray]) -> None:
    """``dtc.save`` inside a traced function: a ``save`` op of `values` under their names,
    after the ops that compute them."""
    items = list(values.items())
    recorders = {id(x.recorder) for _, x in items}
    if len(recorders) != 1:
        raise TraceError("dtc.save inside a compiled function saves values of that function "
                         "only", user_location())
    recorder = items[0][1].recorder
    recorder.emit_effect("save", [x.value for _, x in items],
                         {"names": tuple(n for n, _ in items), "prefix": prefix})


def _definition(fn: Callable) -> Location | None:
    """The first line of `fn` (of the function it wraps, `__wrapped__`, if any; or of a
    callable object's ``__call__``), if it has one."""
    fn = inspect.unwrap(fn)
    code = getattr(fn, "__code__", None) or getattr(type(fn).__call__, "__code__", None)
    return None if code is None else Location(source_path(code.co_filename), code.co_firstlineno)


def _output_location(value: Value, fn: Callable) -> Location:
    """Where an output comes from: the op that made it, else the function's first line."""
    if value.owner is not None and value.owner.loc is not None:
        return value.owner.loc
    return _definition(fn) or user_location()


def _is_output(out: object) -> bool:
    """Whether `out` is something a compiled function may return as a leaf."""
    return isinstance(out, (Value, np.ndarray, np.generic, bool, int, float, complex))


def _flatten_outputs(returned: object, func_name: str, fn: Callable
                     ) -> tuple[list[Value | np.ndarray | np.generic | PythonScalar], OutputTree]:
    """The returned arrays in order and their structure; TraceError for anything else,
    None included (a None inside a tuple, list or dict holds no array; a function returning
    only None has most likely lost its ``return``)."""
    try:
        if returned is None:
            raise TypeError("a NoneType")
        leaves, tree = flatten(returned, _is_output)
    except TypeError as e:
        raise TraceError(f"{func_name} returned {e}; a compiled function must return arrays "
                         "(or tuples, lists and dicts of them)", _definition(fn)) from None
    return cast(list[Value | np.ndarray | np.generic | PythonScalar], leaves), tree


def _out_shardings(out_shardings: Sequence[Sharding | None] | Sharding | None, count: int,
                   fn_name: str) -> list[Sharding | None]:
    if out_shardings is None:
        return [None] * count
    given: list[Sharding | None] = (
        [out_shardings] if isinstance(out_shardings, Sharding) else list(out_shardings))
    if len(given) != count:
        raise TraceError(f"{fn_name} returns {count} value(s) but {len(given)} out_layouts are "
                         "given", user_location())
    return given


def trace(fn: Callable, args: Sequence[TensorType], arg_names: Sequence[str], mesh: MeshShape,
          out_shardings: Sequence[Sharding | None] | Sharding | None = None,
          name: str | None = None, constants: Mapping[int, object] | None = None) -> Module:
    """Trace `fn` on arguments of types `args` (their shardings are the in_layouts) into a
    module with one function, named `name` or after `fn`, whose results are the arrays `fn`
    returned (flattened: see `trace_outputs`). `constants` are arguments passed to `fn` as
    they are, by position (Python numbers: numpy's weak typing applies to them as to a
    number written in the function); `args` fill the other positions."""
    return trace_outputs(fn, args, arg_names, mesh, out_shardings, name, constants)[0]


def trace_outputs(fn: Callable, args: Sequence[TensorType], arg_names: Sequence[str],
                  mesh: MeshShape,
                  out_shardings: Sequence[Sharding | None] | Sharding | None = None,
                  name: str | None = None, constants: Mapping[int, object] | None = None,
                  inputs: Sequence[OutputTree] | None = None) -> tuple[Module, OutputTree]:
    """`trace`, and the structure (nested tuples, lists, dicts) `fn` returned its arrays in,
    which the module's results are the leaves of, in order. With `inputs`, the arguments
    and constants are the leaves of `fn`'s arguments, which have those structures."""
    func_name = name or function_name(fn)
    if len(args) != len(arg_names):
        raise TraceError(f"{func_name}: {len(args)} argument types but {len(arg_names)} names")
    params = [Value(t, None, n) for t, n in zip(args, arg_names)]
    for param in params:
        if param.type.sharding is not None:
            param.origin = LayoutOrigin(f"%{param.name_hint}")
    func = Function(func_name, params)
    rec = Recorder(func, mesh)
    _TRACING.depth = getattr(_TRACING, "depth", 0) + 1
    try:
        traced = iter([TracedArray(p, rec) for p in params])
        given = dict(constants or {})
        count = len(params) + len(given)
        call = [given[i] if i in given else next(traced) for i in range(count)]
        if inputs is not None:
            call = unflatten_each(inputs, call)
        leaves, tree = _flatten_outputs(unwrap(fn(*call), rec), func_name, fn)
        outputs = [rec.value(out) for out in leaves]
        shardings = _out_shardings(out_shardings, len(outputs), func_name)
        results = [
            value if sharding is None else _relayout(
                rec, value, sharding, OutLayout(i, func_name), f"out_layouts[{i}]",
                _output_location(value, fn))
            for i, (value, sharding) in enumerate(zip(outputs, shardings))
        ]
    finally:
        rec.active = False
        _TRACING.depth -= 1
    func.set_results(results)
    return Module(mesh, [func], entry=func.name), tree

