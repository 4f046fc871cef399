"""The Triton expressions of the IR's ops, for the kernel templates (`triton_codegen`).

`op_lines` writes one line per op of a body on a tile of values (``v<n> = ...``): each op's
operands cast to its result's compute type (`compute_type`: fp32 for fp16 and bf16, whose
values are rounded back after every op as numpy rounds them, `STORAGE`), so kernels follow
numpy's type promotion as the IR records it. A row reduction reduces the tile's lanes
(`mask` says which hold values; the others get its identity) to one value per row.
`header` and `signature` write what every generated file starts with. Ops, dtypes or
constants no template covers raise `Unsupported`.

Only `triton.language` itself is used (the interpreter does not patch libdevice), so tanh is
written with exp (and a Taylor series near 0) and power only takes a constant exponent.
This module generates text; it imports neither torch nor triton.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from dtensor_compiler.ir.core import Function, Operation, Value
from dtensor_compiler.ir.fusion import row_reduction
from dtensor_compiler.ir.types import numpy_dtype


class Unsupported(Exception):
    """The body has an op, dtype or constant the templates do not cover (the message says
    which); the op runs its body op by op instead."""


_COMPUTE = {
    "f64": "tl.float64", "f32": "tl.float32", "f16": "tl.float32", "bf16": "tl.float32",
    "i64": "tl.int64", "i32": "tl.int32", "i16": "tl.int16", "i8": "tl.int8",
    "u8": "tl.uint8", "u16": "tl.uint16", "u32": "tl.uint32", "u64": "tl.uint64",
    "bool": "tl.int1",
}
"""IR dtype -> the Triton dtype values of it are computed in."""

FLOATS = ("f64", "f32", "f16", "bf16")
STORAGE = {"f16": "tl.float16", "bf16": "tl.bfloat16"}
"""Dtypes computed in fp32 and rounded back after every op."""


def _binary(template: str) -> Callable[[list[str]], str]:
    return lambda a: template.format(*a)


_ARITHMETIC: dict[str, Callable[[list[str]], str]] = {
    "add": _binary("{0} + {1}"), "subtract": _binary("{0} - {1}"),
    "multiply": _binary("{0} * {1}"), "divide": _binary("{0} / {1}"),
    "maximum": _binary("tl.maximum({0}, {1}, propagate_nan=tl.PropagateNan.ALL)"),
    "minimum": _binary("tl.minimum({0}, {1}, propagate_nan=tl.PropagateNan.ALL)"),
    "negative": lambda a: f"-{a[0]}", "positive": lambda a: a[0],
    "absolute": lambda a: f"tl.abs({a[0]})", "fabs": lambda a: f"tl.abs({a[0]})",
    "square": lambda a: f"{a[0]} * {a[0]}",
}
"""Ops whose operands are cast to the result's compute type first."""
_FLOAT_MATH: dict[str, Callable[[list[str]], str]] = {
    name: (lambda fn: lambda a: f"tl.{fn}({a[0]})")(name)
    for name in ("exp", "exp2", "log", "log2", "sqrt", "sin", "cos", "floor", "ceil")
}
_FLOAT_MATH.update({
    "reciprocal": lambda a: f"1.0 / {a[0]}",
    "tanh": lambda a: _tanh(a[0]),
})
"""Float-only math, on operands cast to the result's compute type."""
_TANH_SERIES = ("1.0", "-1.0 / 3.0", "2.0 / 15.0", "-17.0 / 315.0", "62.0 / 2835.0",
                "-1382.0 / 155925.0", "21844.0 / 6081075.0", "-929569.0 / 638512875.0")
"""tanh's Taylor coefficients of x, x^3, ..., x^15: below |x| = 1/8 the series is exact to
fp64 (the next term is under 1e-17 of x); above, 1 - 2 / (exp(2x) + 1) loses a few ulps to
cancellation (at most 13 in fp64 and 15 in fp32, measured against numpy)."""


def _tanh(x: str) -> str:
    series = _TANH_SERIES[-1]
    for c in reversed(_TANH_SERIES[:-1]):
        series = f"{c} + {x} * {x} * ({series})"
    return (f"tl.where(tl.abs({x}) < 0.125, {x} * ({series}), "
            f"1.0 - 2.0 / (tl.exp(2.0 * {x}) + 1.0))")


_COMPARISONS = {"equal": "==", "not_equal": "!=", "less": "<", "less_equal": "<=",
                "greater": ">", "greater_equal": ">="}
_LOGICAL = {"logical_and": "&", "logical_or": "|", "logical_xor": "^"}


@dataclass(frozen=True)
class Generated:
    """A generated kernel: its source, its template and the rank of its index space."""

    source: str
    template: str
    """``elementwise`` (one element per lane), ``rows`` (whole rows of the row space per
    program, the row across lanes) or ``contraction`` (a tile of a matmul's result)."""
    rank: int


_REDUCE = {"reduce_sum": "tl.sum", "reduce_max": "tl.max", "reduce_min": "tl.min"}


def _identity(kind: str, reduction: Operation) -> str:
    """What masked lanes hold: the reduction's identity in its result's dtype."""
    dtype = reduction.type.dtype
    if kind == "reduce_sum":
        return "0"
    if dtype in FLOATS:
        return "-float('inf')" if kind == "reduce_max" else "float('inf')"
    if dtype == "bool":
        raise Unsupported(f"{kind} of bool")
    info = np.iinfo(numpy_dtype(dtype))
    return str(int(info.min if kind == "reduce_max" else info.max))


_POINTEE = {"f64": "fp64", "f32": "fp32", "f16": "fp16", "bf16": "bf16", "i64": "i64",
            "i32": "i32", "i16": "i16", "i8": "i8", "u8": "u8", "u16": "u16", "u32": "u32",
            "u64": "u64", "bool": "i1"}


def op_lines(ops: Sequence[Operation], names: dict[int, str], block: str) -> list[str]:
    """The lines computing `ops` (``v<n> = ...``, a row reduction over the tile's lanes as
    one value per row), naming each result in `names`."""
    lines: list[str] = []
    for n, op in enumerate(ops):
        assert op.result is not None
        if row_reduction(op):
            expression = _reduction(op, n, names, lines)
        else:
            expression = _expression(op, names, block)
        names[id(op.result)] = f"v{n}"
        storage = STORAGE.get(op.result.type.dtype)
        if storage is not None:  # rounded as numpy rounds it, then computed on in fp32
            expression = f"({expression}).to({storage}).to(tl.float32)"
        lines.append(f"v{n} = {expression}")
    return lines


def _reduction(op: Operation, n: int, names: dict[int, str], lines: list[str]) -> str:
    """A row reduction of a row kernel's tile (masked lanes hold its identity, NaN
    propagates through max and min): adds the lines before it, returns its expression."""
    (operand,) = op.operands
    assert op.result is not None
    out = compute_type(op.result)
    kind = op.name
    lines.append(f"x{n} = tl.where(mask, {names[id(operand)]}.to({out}), "
                 f"{_identity(kind, op)})")
    total = f"{_REDUCE[kind]}(x{n}, axis=1, keep_dims=True)"
    if kind != "reduce_sum" and operand.type.dtype in FLOATS:
        nan = f"tl.max((x{n} != x{n}).to(tl.int32), axis=1, keep_dims=True) > 0"
        return f"tl.where({nan}, float('nan'), {total})"
    return total


def signature(pointers: Sequence[tuple[str, Value]], ints: Sequence[str]) -> dict[str, str]:
    return {**{name: f"*{_pointee(v)}" for name, v in pointers}, **dict.fromkeys(ints, "i64")}


def header(body: Function, signature: dict[str, str], constants: dict[str, int]
            ) -> list[str]:
    ops = ", ".join(dict.fromkeys(op.name for op in body.ops))
    return [f'"""Generated by dtensor-compiler from @{body.name} ({ops})."""',
            "import triton",
            "import triton.language as tl",
            "",
            f"SIGNATURE = {signature!r}",
            f"AOT_CONSTANTS = {constants!r}",
            '"""The argument types and block sizes to compile it with ahead of time '
            '(`runtime.triton_aot`)."""',
            "",
            "",
            "@triton.jit"]


def _pointee(value: Value) -> str:
    """The Triton type name of what a pointer to `value`'s elements points to."""
    name = _POINTEE.get(value.type.dtype)
    if name is None:
        raise Unsupported(f"dtype {value.type.dtype}")
    return name


def compute_type(value: Value) -> str:
    dtype = _COMPUTE.get(value.type.dtype)
    if dtype is None:
        raise Unsupported(f"dtype {value.type.dtype}")
    return dtype


def _expression(op: Operation, names: dict[int, str], block: str) -> str:
    """The Triton expression of one op of a body, cast to its result's compute type."""
    assert op.result is not None
    out = compute_type(op.result)
    operands = op.operands
    name = op.name
    if name == "full":
        value = op.attrs["value"]
        if not isinstance(value, (bool, int, float)):
            raise Unsupported(f"full of {value!r}")
        text = repr(value) if not isinstance(value, float) or np.isfinite(value) \
            else f"float('{value}')"
        return f"tl.full({block}, {text}, {out})"
    if name in ("broadcast_to", "stop_gradient"):
        return names[id(operands[0])]
    if name == "astype":
        source = names[id(operands[0])]
        if op.result.type.dtype == "bool":
            return f"{source} != 0"
        return f"{source}.to({out})"
    if name == "power":
        return _power(op, names, out)
    if name == "where":
        cond, a, b = (names[id(v)] for v in operands)
        return f"tl.where({cond}, {a}.to({out}), {b}.to({out}))"
    cast = [f"{names[id(v)]}.to({out})" for v in operands]
    if name in _ARITHMETIC:
        if op.result.type.dtype == "bool" and name not in ("positive",):
            raise Unsupported(f"{name} of bool")
        if name == "divide" and op.result.type.dtype not in FLOATS:
            raise Unsupported("integer divide")
        return f"({_ARITHMETIC[name](cast)}).to({out})"
    if name in _FLOAT_MATH:
        if op.result.type.dtype not in FLOATS:
            raise Unsupported(f"{name} of {op.result.type.dtype}")
        return f"({_FLOAT_MATH[name](cast)}).to({out})"
    if name in _COMPARISONS:
        common = _common(operands)
        a, b = (f"{names[id(v)]}.to({common})" for v in operands)
        return f"{a} {_COMPARISONS[name]} {b}"
    if name in _LOGICAL:
        a, b = (f"({names[id(v)]} != 0)" for v in operands)
        return f"{a} {_LOGICAL[name]} {b}"
    if name == "logical_not":
        return f"{names[id(operands[0])]} == 0"
    if name == "isnan":
        x = names[id(operands[0])]
        return f"{x} != {x}"
    raise Unsupported(f"op {name}")


def _common(operands: Sequence[Value]) -> str:
    """The compute type comparisons of these operands run in (numpy's promotion)."""
    common = np.result_type(*(numpy_dtype(v.type.dtype) for v in operands))
    names = {"float64": "f64", "float32": "f32", "float16": "f16", "bfloat16": "bf16",
             "int64": "i64",
             "int32": "i32", "int16": "i16", "int8": "i8", "uint8": "u8", "bool": "bool"}
    name = names.get(common.name)
    if name is None:
        raise Unsupported(f"a comparison in {common}")
    return _COMPUTE[name]


def _power(op: Operation, names: dict[int, str], out: str) -> str:
    """``x ** c`` for a constant c of 2, 3, 0.5 or -1, the only exponents written out."""
    base, exponent = op.operands
    owner = exponent.owner
    if owner is None or owner.name != "full":
        raise Unsupported("power with an exponent that is not a constant")
    c = owner.attrs["value"]
    x = f"{names[id(base)]}.to({out})"
    forms = {2: f"{x} * {x}", 3: f"{x} * {x} * {x}", 0.5: f"tl.sqrt({x})", -1: f"1.0 / {x}"}
    assert op.result is not None
    if not isinstance(c, (int, float)) or c not in forms or (
            c in (0.5, -1) and op.result.type.dtype not in FLOATS):
        raise Unsupported(f"power {c!r}")
    return f"({forms[c]}).to({out})"
