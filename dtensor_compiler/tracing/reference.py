"""The reference page of the supported numpy API (``docs/numpy.md``), generated.

Every entry comes from the tracer's own tables: the ufunc ops (`ir.ops.elementwise.UFUNCS`),
the ufunc methods and functions of `numpy_api`, and the operators, methods and attributes of
`TracedArray`. Each function is traced once on small probe arguments, and its sharding
behaviour is read from the definitions of the ops it recorded (traits, factor rules,
barriers), so the page says what the compiler does. Regenerate with
``python -m dtensor_compiler.tracing.reference > docs/numpy.md``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np

from dtensor_compiler.ir import opdef
from dtensor_compiler.ir.core import Module
from dtensor_compiler.ir.factors import FactorKind
from dtensor_compiler.ir.mesh_shape import MeshShape
from dtensor_compiler.ir.ops.elementwise import UFUNCS
from dtensor_compiler.ir.types import TensorType
from dtensor_compiler.tracing import numpy_api
from dtensor_compiler.tracing.driver import trace
from dtensor_compiler.tracing.tracer import TracedArray

_MESH = MeshShape((("x", 2),))
_ARGS = [TensorType("f32", (4, 4)), TensorType("f32", (4, 4)), TensorType("f32", (1, 4, 4))]
_IGNORED = frozenset({"relayout", "constant"})

_PROBES: tuple[Callable[..., Any], ...] = (
    lambda f, x, y, z: f(x),
    lambda f, x, y, z: f(x, y),
    lambda f, x, y, z: f([x, y]),
    lambda f, x, y, z: f(x > 0, x, y),
    lambda f, x, y, z: f(x, 1),
    lambda f, x, y, z: f(x, 2),
    lambda f, x, y, z: f(x, 0, 1),
    lambda f, x, y, z: f(x, (16,)),
    lambda f, x, y, z: f(x, (2, 4, 4)),
    lambda f, x, y, z: f(x, [0, 1]),
    lambda f, x, y, z: f(x, np.float64),
    lambda f, x, y, z: f("ij,jk->ik", x, y),
    lambda f, x, y, z: f(z),
    lambda f, x, y, z: f((4, 4), like=x),
    lambda f, x, y, z: f((4, 4), 1.0, like=x),
    lambda f, x, y, z: f(4, like=x),
)
"""Argument lists tried in turn; the first that traces gives the ops a function records."""


class _Static(Exception):
    """The probe returned no traced array: a Python value or a concrete numpy array."""


def _traced_only(result: object) -> object:
    items = result if isinstance(result, (list, tuple)) else [result]
    if not items or not all(isinstance(r, TracedArray) for r in items):
        raise _Static
    return result


_STATIC = Module(_MESH, [])
"""What `_probe` gives for a call that traced but returned no traced array."""


def _probe(call: Callable[..., Any]) -> Module | None:
    try:
        return trace(lambda x, y, z: _traced_only(call(x, y)), _ARGS, ["x", "y", "z"], _MESH,
                     name="probe")
    except _Static:
        return _STATIC
    except Exception:
        return None


def _probe3(call: Callable[..., Any]) -> Module | None:
    try:
        return trace(lambda x, y, z: _traced_only(call(x, y, z)), _ARGS, ["x", "y", "z"],
                     _MESH, name="probe")
    except _Static:
        return _STATIC
    except Exception:
        return None


def _ops_of(module: Module) -> list[str]:
    names: list[str] = []
    if module is _STATIC:
        return names
    for op in module.main.ops:
        if op.name not in _IGNORED and op.name not in names:
            names.append(op.name)
    return names


def _kinds(names: frozenset[opdef.ReduceOp] | set[opdef.ReduceOp]) -> str:
    return "/".join(sorted(k.value for k in names))


def _factor_behaviour(module: Module, name: str) -> list[str]:
    """What the factor rule of the first `name` op of `module` says about its axes."""
    for op in module.main.ops:
        if op.name != name:
            continue
        d = opdef.lookup(name)
        if not isinstance(d.sharding, opdef.Factors):
            return []
        rule = d.sharding.rule(op.attrs, [v.type for v in op.operands], op.type)
        out = []
        reduced = {r for k, r in zip(rule.kinds, rule.reduce_ops)
                   if k is FactorKind.REDUCED and r is not None}
        if reduced:
            out.append(f"a sharded reduced axis leaves a pending {_kinds(reduced)}")
        if FactorKind.NEEDS_REPLICATION in rule.kinds:
            out.append("replicates the axis it works along")
        if any(not dim and size > 1 for operand, t in zip(rule.operands, op.operands)
               for dim, size in zip(operand, t.type.shape)):
            out.append("replicates an axis it cuts, joins or reorders (no factor maps it "
                       "to the result)")
        return out
    return []


def describe_op(name: str, module: Module | None = None) -> str:
    """The sharding behaviour of op `name`, from its definition (and, given a module holding
    an instance, its factor rule there)."""
    d = opdef.lookup(name)
    t = d.traits
    parts: list[str] = []
    if d.operands == 0:
        parts.append("source: made in the layout its consumers want, without communication")
    elif isinstance(d.sharding, opdef.Barrier):
        parts.append("barrier: operands as the op requires (replicated by default)")
    elif t.elementwise:
        parts.append("elementwise: any layout")
    elif t.reduction is not None:
        parts.append(f"reduces axes: a sharded reduced axis leaves a pending {t.reduction.value}")
    elif module is not None:
        parts.extend(_factor_behaviour(module, name)
                     or ["each dim's sharding maps to the result by its factor rule"])
    else:
        parts.append("layouts follow its factor rule")
    if t.commutes_with:
        parts.append(f"carries pending {_kinds(t.commutes_with)}")
    if t.linear_in:
        which = ("every operand" if isinstance(t.linear_in, opdef.AllOperands)
                 else "operand " + ", ".join(str(i) for i in t.linear_in))
        parts.append(f"carries a pending sum on {which}")
    if not t.commutes_with and not t.linear_in and d.operands != 0:
        parts.append("pending reductions are applied first")
    return "; ".join(parts)


def _function_row(label: str, call: Callable[..., Any] | None,
                  func: Callable) -> str:
    label = label.replace("|", "\\|")
    module = None
    if call is not None:
        module = _probe(call) or _probe(
            lambda x, y: call(x.astype(np.int32), y.astype(np.int32)))
    else:
        for probe in _PROBES:
            found = _probe3(lambda x, y, z, p=probe: p(func, x, y, z))
            if found is not None and (module is None or _ops_of(found)):
                module = found
            if module is not None and _ops_of(module):
                break
    if module is None:
        return f"| `{label}` | | not probed: see its lowering in `dtensor_compiler/tracing/` |"
    ops = _ops_of(module)
    if not ops:
        return f"| `{label}` | | no op: a Python value from the static shape, or the input itself |"
    behaviour = "<br>".join(f"`{n}`: {describe_op(n, module)}" for n in ops)
    label = label.replace("|", "\\|")
    return f"| `{label}` | {', '.join(f'`{n}`' for n in ops)} | {behaviour} |"


_HEADER = "| name | IR ops | sharding |\n|---|---|---|"


def _section(title: str, intro: str, rows: list[str]) -> str:
    return f"## {title}\n\n{intro}\n\n{_HEADER}\n" + "\n".join(rows) + "\n"


def _public_members() -> tuple[list[str], list[str]]:
    methods, attributes = [], []
    for name, member in vars(TracedArray).items():
        if name.startswith("_"):
            continue
        if isinstance(member, property):
            attributes.append(name)
        elif inspect.isfunction(member):
            methods.append(name)
    return sorted(methods), sorted(attributes)


_OPERATORS = {name: symbol for name, symbol in (
    ("__add__", "+"), ("__sub__", "-"), ("__mul__", "*"), ("__truediv__", "/"),
    ("__floordiv__", "//"), ("__mod__", "%"), ("__pow__", "**"), ("__matmul__", "@"),
    ("__and__", "&"), ("__or__", "|"), ("__xor__", "^"), ("__lshift__", "<<"),
    ("__rshift__", ">>"), ("__eq__", "=="), ("__ne__", "!="), ("__lt__", "<"),
    ("__le__", "<="), ("__gt__", ">"), ("__ge__", ">="), ("__neg__", "unary -"),
    ("__pos__", "unary +"), ("__abs__", "abs()"), ("__invert__", "~"),
    ("__getitem__", "x[...]"))}


def _attribute(name: str) -> Callable[..., Any]:
    def get(x: object, y: object) -> object:
        value = getattr(x, name)
        return value
    return get


def _getitem(x: Any, y: Any) -> Any:
    return x[1:3]


def _unary_operator(dunder: str) -> Callable[..., Any]:
    return lambda x, y: getattr(x, dunder)()


def _binary_operator(dunder: str) -> Callable[..., Any]:
    return lambda x, y: getattr(x, dunder)(y)


def render() -> str:
    """The text of ``docs/numpy.md``."""
    ufunc_rows = [f"| `numpy.{n}` | `{n}` | {describe_op(n)} |" for n in sorted(UFUNCS)]
    ufunc_rows.insert(0, "| `numpy.matmul` | `matmul` | "
                      + describe_op("matmul", _probe(lambda x, y: x @ y)) + " |")
    method_rows = [
        _function_row(f"numpy.{u}.{m}", lambda x, y, u=u, m=m: getattr(getattr(np, u), m)(x),
                      np.add)
        for u, m in sorted(numpy_api._UFUNC_METHODS)]
    function_rows = [_function_row(numpy_api.qualified_name(f), None, f)
                     for f in sorted(numpy_api.FUNCTIONS, key=numpy_api.qualified_name)]
    operator_rows = []
    for dunder, symbol in _OPERATORS.items():
        if not hasattr(TracedArray, dunder):
            continue
        if dunder == "__getitem__":
            call = _getitem
        elif symbol.startswith("unary") or symbol in ("abs()", "~"):
            call = _unary_operator(dunder)
        else:
            call = _binary_operator(dunder)
        operator_rows.append(_function_row(symbol, call, np.add))
    methods, attributes = _public_members()
    method_rows_nd = []
    for name in methods:
        target = getattr(np, name, None)
        method_rows_nd.append(_function_row(f"x.{name}", None, getattr(TracedArray, name))
                              if target is None else
                              _function_row(f"x.{name}", None,
                                            lambda *a, n=name, **k: getattr(a[0], n)(*a[1:], **k)))
    attribute_rows = [_function_row(f"x.{name}", _attribute(name), np.add)
                      for name in attributes]
    doc = inspect.cleandoc("""
        # The supported numpy API

        Generated by `python -m dtensor_compiler.tracing.reference > docs/numpy.md` from the
        tracer's tables; `tests/test_docs.py` fails when this page is out of date. Anything
        not listed raises `UnsupportedOperationError` naming it, as does a listed function
        called with an argument it does not support.

        *IR ops* are the ops a call records (traced once on small probe arguments; constants
        left out). *Sharding* is read from each op's definition: an elementwise op takes any
        layout; a sharded axis an op reduces leaves a pending reduction, reduced only where a
        consumer needs it; an axis an op must see whole is replicated (gathered) first;
        "carries pending" names the pending reductions an op lets through unreduced, and
        every other op has them applied first. How the planner then chooses and what it
        costs: the README's Design section.
        """)
    return "\n\n".join([
        doc,
        _section("Ufuncs", "Called as `numpy.<name>(...)` or through an operator; numpy "
                 "broadcasting and dtype promotion, no keyword arguments.", ufunc_rows),
        _section("Ufunc methods", "Only these; any other ufunc method is refused.",
                 method_rows),
        _section("Functions", "With numpy's signatures; a parameter a function's lowering does "
                 "not take is refused.", function_rows),
        _section("Operators", "On traced arrays; in-place operators (`+=`, ...) are refused, "
                 "since traced arrays are immutable.", operator_rows),
        _section("ndarray methods", "Each is spelled as the numpy call it stands for "
                 "(`x.flatten()` is `numpy.ravel(x)`).",
                 method_rows_nd),
        _section("ndarray attributes", "Shape, dtype and rank come from the traced type.",
                 attribute_rows),
    ])


if __name__ == "__main__":
    print(render(), end="")
