"""The textual IR: a deterministic printer whose output `parser.parse_module` reads back.

```
mesh<dp=2, tp=4>
func @mlp(%x: f32[512,256] @ {dp, -}, %w: f32[256,1024] @ {-, tp}) -> (f32[512,1024] @ {dp, tp}) {
  %0 = matmul %x, %w : f32[512,1024] @ {dp, tp}
  %1 = all_reduce %0 {mesh_dims = [tp], op = sum} : f32[512,256] @ {dp, -}  // why: ...
  return %1
}
```
A localized module's first line is ``mesh<...> local`` and its shapes are per device; a module
of several functions names the one that runs when it has one, ``mesh<...> entry @f``.
Function arguments keep the user's names; op results are numbered in order by the printer.
An op with several results prints them all, ``%2, %3 = op ... : f32[4], f32[4]``; an op
without results prints no ``=`` and no type.
With ``locations=True`` every op ends with ``loc("file.py":12)`` (like MLIR's debug info).
Constants of more than `INLINE_LIMIT` elements, and complex constants, print as
``dense_hex<"...">`` (raw little-endian bytes), so printing is exact and lossless.
"""

from __future__ import annotations

import json
import math
import re
from typing import NamedTuple

import numpy as np

from dtensor_compiler.errors import Location
from dtensor_compiler.ir import opdef
from dtensor_compiler.ir.attrs import Attr
from dtensor_compiler.ir.core import Function, LayoutOrigin, Level, Module, Operation, Value
from dtensor_compiler.ir.reasons import (
    Cause,
    DimGivesUp,
    DimSharded,
    NeedsLayout,
    NeedsWholeDim,
    OperandRelayout,
    OpRef,
    OutLayout,
    PendingNotTaken,
    Planned,
    Reason,
    ReducedAnyway,
    Reductions,
    Requested,
    ReturnedPending,
    SharedRead,
    UserRelayout,
    ValueRef,
    WantedResultLayout,
    Writes,
    Written,
)
from dtensor_compiler.ir.types import TensorType, is_floating

INLINE_LIMIT = 16
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_KEYWORDS = {"true", "false", "inf", "nan", "local", "partial", "dense", "dense_hex"}


def _scalar(x: object) -> str:
    if isinstance(x, (bool, np.bool_)):
        return "true" if x else "false"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        f = float(x)
        if math.isnan(f):
            return "nan"
        if math.isinf(f):
            return "inf" if f > 0 else "-inf"
        return repr(f)
    if isinstance(x, complex):
        raise TypeError("complex attributes are not printable")
    raise TypeError(f"cannot print attribute value {x!r}")


def format_attr(value: object) -> str:
    if isinstance(value, str):
        return value if _IDENT.match(value) and value not in _KEYWORDS else json.dumps(value)
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(format_attr(v) for v in value) + "]"
    if isinstance(value, np.ndarray):
        return format_dense(value)
    return _scalar(value)


def format_dense(value: np.ndarray) -> str:
    """``dense<[...]>`` for small arrays, else ``dense_hex``; complex arrays, and arrays whose
    numbers do not give back their exact bits (a NaN with its sign bit set), always use
    ``dense_hex``."""
    if value.size > INLINE_LIMIT or value.dtype.kind == "c" or not prints_exactly(value):
        data = np.ascontiguousarray(value).astype(value.dtype.newbyteorder("<"), copy=False)
        return f'dense_hex<"{data.tobytes().hex()}">'

    def nest(a: np.ndarray) -> str:
        if a.ndim == 0:
            return _scalar(a.item())
        return "[" + ", ".join(nest(x) for x in a) + "]"

    return f"dense<{nest(value)}>"


def prints_exactly(value: np.ndarray) -> bool:
    """Whether the numbers of an array, printed as numbers, read back to its exact bits (a NaN
    with its sign bit set, or a NaN payload, does not)."""
    if not is_floating(value.dtype):
        return True
    printed = [float(_scalar(x)) for x in value.reshape(-1).tolist()]
    return np.array(printed, dtype=value.dtype).tobytes() == value.tobytes()


class Namer:
    """Assigns printed names: arguments by their hint (made unique), results by number."""

    def __init__(self, func: Function) -> None:
        self.names: dict[int, str] = {}
        used: set[str] = set()
        for i, arg in enumerate(func.args):
            base = arg.name_hint if arg.name_hint and _IDENT.match(arg.name_hint) else f"arg{i}"
            name, k = base, 1
            while name in used:
                name, k = f"{base}_{k}", k + 1
            used.add(name)
            self.names[id(arg)] = name
        n = 0
        for op in func.ops:
            for result in op.results:
                self.names[id(result)] = str(n)
                n += 1

    def __call__(self, v: Value) -> str:
        return "%" + self.names.get(id(v), "<unknown>")


def format_op(op: Operation, name: Namer, locations: bool = False) -> str:
    return op_text(op, name).render(locations)


class OpText(NamedTuple):
    """What an op's printed line shows, taken from the op when it is made: rendered later,
    the line is the one the op had then, even if a later pass rewrote the op in place."""

    results: tuple[str, ...]
    name: str
    operands: tuple[str, ...]
    attrs: tuple[tuple[str, Attr], ...]
    """In printed order, defaults elided."""
    types: tuple[TensorType, ...]
    loc: Location | None
    why: Reason | None

    def render(self, locations: bool = False) -> str:
        parts = []
        if self.results:
            parts.append(", ".join(self.results) + " = ")
        parts.append(self.name)
        if self.operands:
            parts.append(" " + ", ".join(self.operands))
        if self.attrs:
            parts.append(" {" + ", ".join(f"{k} = {format_attr(a)}" for k, a in self.attrs)
                         + "}")
        if self.types:
            parts.append(" : " + ", ".join(t.text() for t in self.types))
        if locations and self.loc is not None:
            parts.append(f" loc({json.dumps(self.loc.file)}:{self.loc.line})")
        if self.why is not None:
            parts.append(f"  // why: {format_reason(self.why)}")
        return "".join(parts)


def op_text(op: Operation, name: Namer) -> OpText:
    """The printed line of `op` under the names `name` gives, to render now or later."""
    definition = opdef.find(op.name)
    specs = {a.name: a for a in definition.attrs} if definition is not None else {}
    elided = {k for k, a in specs.items()
              if a.elide_default and k in op.attrs and op.attrs[k] == a.default}
    keys = ([k for k in specs if k in op.attrs and k not in elided]
            + sorted(k for k in op.attrs if k not in specs))
    return OpText(tuple(name(r) for r in op.results), op.name,
                  tuple(name(v) for v in op.operands), tuple((k, op.attrs[k]) for k in keys),
                  tuple(r.type for r in op.results), op.loc, op.why)


def print_function(func: Function, locations: bool = False) -> str:
    name = Namer(func)
    args = ", ".join(f"{name(a)}: {a.type.text()}" for a in func.args)
    rets = ", ".join(v.type.text() for v in func.results)
    lines = [f"func @{func.name}({args}) -> ({rets}) {{"]
    lines += ["  " + format_op(op, name, locations) for op in func.ops]
    lines.append("  return" + (" " + ", ".join(name(v) for v in func.results)
                               if func.results else ""))
    lines.append("}")
    return "\n".join(lines)


def print_module(module: Module, locations: bool = False) -> str:
    head = module.mesh.text() + (" local" if module.level is Level.LOCAL else "")
    if module.entry is not None and len(module.functions) > 1:
        head += f" entry @{module.entry}"
    body = "\n\n".join(print_function(f, locations) for f in module.functions)
    return f"{head}\n{body}\n"


# ---------------------------------------------------------------------------------------------
# reasons


def format_seconds(s: float) -> str:
    """Seconds as the printer and the explain table show them (``1.2 ms``, ``35.0 us``)."""
    for unit, scale in (("s", 1.0), ("ms", 1e-3)):
        if s >= scale:
            return f"{s / scale:.1f} {unit}"
    return f"{s * 1e6:.1f} us"


def format_reason(reason: Reason) -> str:
    """A reason as the user reads it in ``// why:`` and in the explain table."""
    if isinstance(reason, Written):
        return reason.text
    if isinstance(reason, OutLayout):
        return f"out_layouts[{reason.index}] of {reason.function}"
    if isinstance(reason, UserRelayout):
        return "dtc.relayout"
    if isinstance(reason, SharedRead):
        return (f"{reason.name} is read by one of every {reason.readers} devices that hold "
                f"the same block and gathered over {', '.join(reason.mesh_dims)}: "
                f"{format_seconds(reason.shared_seconds)} instead of "
                f"{format_seconds(reason.direct_seconds)} for every device to read it")
    if isinstance(reason, Writes):
        slices = ", ".join(name + box for name, box in reason.slices)
        return f"device {reason.device} writes {slices} ({reason.nbytes:,} bytes)"
    if isinstance(reason, Requested):
        return f"{reason.source} asks for {reason.target.text()}"
    if isinstance(reason, ReturnedPending):
        return (f"returned value {reason.index} ({_value(reason.value)}): "
                + _pending("a returned value", reason.reductions))
    if isinstance(reason, Planned):
        text = (f"relayout to {reason.target.text()}" if reason.relayout is None
                else format_reason(reason.relayout))
        pending = reason.pending
        if pending is not None:
            text += (f"; {_op(pending.op)} left a pending "
                     f"{'/'.join(op.value for op in pending.reductions)} over "
                     f"{', '.join(pending.mesh_dims)}")
        return text
    assert isinstance(reason, OperandRelayout)
    text = (f"{_op(reason.consumer)} needs {_value(reason.operand)} as {reason.target.text()}: "
            + "; ".join(_cause(c) for c in reason.causes))
    if reason.matched:
        text += f" (to match {' and '.join(_matched(m) for m in reason.matched)})"
    return text


def format_origin(origin: LayoutOrigin) -> str:
    """``out_layouts[0] via matmul at f.py:3``."""
    return origin.source if origin.via is None else f"{origin.source} via {_op(origin.via)}"


def format_op_ref(ref: OpRef) -> str:
    """``matmul at f.py:3``."""
    return _op(ref)


def _op(ref: OpRef) -> str:
    return ref.name if ref.loc is None else f"{ref.name} at {ref.loc}"


def _value(ref: ValueRef) -> str:
    if ref.producer is None:
        return f"%{ref.arg}"
    where = "" if ref.producer.loc is None else f" from {ref.producer.loc}"
    return f"the {ref.producer.name} result{where}"


def _matched(m: ValueRef | WantedResultLayout) -> str:
    return "the layout wanted for its result" if isinstance(m, WantedResultLayout) else (
        _value(m))


def _mesh_dims(mesh_dims: tuple[str, ...]) -> str:
    return mesh_dims[0] if len(mesh_dims) == 1 else "(" + ", ".join(mesh_dims) + ")"


def _by_kind(reductions: Reductions) -> list[str]:
    """``["max over dp", "sum over tp, sp"]``: the reductions grouped by kind."""
    by_op: dict[str, list[str]] = {}
    for mesh_dim, op in reductions:
        by_op.setdefault(op.value, []).append(mesh_dim)
    return [f"{op} over {', '.join(dims)}" for op, dims in sorted(by_op.items())]


def _pending(taker: str, reductions: Reductions) -> str:
    return "; ".join(f"{taker} cannot take a pending {r}" for r in _by_kind(reductions))


def _cause(cause: Cause) -> str:
    if isinstance(cause, PendingNotTaken):
        return _pending(cause.taker, cause.reductions)
    if isinstance(cause, ReducedAnyway):
        return (f"{cause.taker} takes it reduced: the pending "
                f"{' and '.join(_by_kind(cause.reductions))} is reduced for another consumer "
                "anyway")
    if isinstance(cause, NeedsWholeDim):
        return f"{cause.op} needs dim {cause.dim} whole"
    if isinstance(cause, DimSharded):
        role = "contracted dim" if cause.contracted else "dim"
        return f"{role} {cause.dim} is sharded on {_mesh_dims(cause.mesh_dims)}"
    if isinstance(cause, NeedsLayout):
        return f"{cause.op} needs this operand as {cause.target.text()}"
    assert isinstance(cause, DimGivesUp)
    text = f"dim {cause.dim} gives up {cause.mesh_dim}"
    to = cause.to
    if to is None:
        return text
    if to.of_result:
        return text + f" to dim {to.dim} of the result"
    if to.value is not None:
        return text + f" to dim {to.dim} of {_value(to.value)}"
    return text + f" to dim {to.dim}"
