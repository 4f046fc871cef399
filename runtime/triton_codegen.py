"""Triton source for a fused kernel body: one elementwise kernel over its output's elements.

`elementwise_source(body)` writes the kernel of a ``kernel`` op's body function (the fuse
pass's groups: elementwise ops and broadcasts), or returns why it cannot (`Unsupported`).
The kernel is named after the body. Each program handles `BLOCK` consecutive elements of the
output (contiguous, `rank` dims including the simulated mesh's leading axes); it unravels
each element's index (int64) and loads every input at ``sum(index[d] * stride[d])``, with a
stride of 0 along the dims the input is broadcast over, so any broadcasting, any rank and
any strided view need no copy. Values are computed in fp32 for fp16 and bf16 (the math
functions want fp32, the GPU too), each op's result rounded to its fp16 or bf16 dtype as
numpy rounds it, and in their own dtype otherwise; every op's result is cast to its IR
dtype's compute type, so the kernel follows numpy's type promotion as the IR records it, and
the store casts to the output's dtype. (Triton's interpreter rounds to bf16 toward zero,
a GPU to nearest as numpy does, so under the interpreter bf16 results may be an ulp off.)

Only `triton.language` itself is used (the interpreter does not patch libdevice), so tanh is
written with exp (and a Taylor series near 0) and power only takes a constant exponent.
This module generates text; it imports neither torch nor triton.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from dtensor_compiler.ir.core import Function, Operation, Value
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

_FLOATS = ("f64", "f32", "f16", "bf16")
_STORAGE = {"f16": "tl.float16", "bf16": "tl.bfloat16"}
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
    "tanh": lambda a: (f"tl.where(tl.abs({a[0]}) < 0.0625, {a[0]} * (1.0 + {a[0]} * {a[0]} * "
                       f"(-1.0 / 3.0 + {a[0]} * {a[0]} * (2.0 / 15.0 - {a[0]} * {a[0]} * "
                       f"(17.0 / 315.0)))), 1.0 - 2.0 / (tl.exp(2.0 * {a[0]}) + 1.0))"),
})
"""Float-only math, on operands cast to the result's compute type."""
_COMPARISONS = {"equal": "==", "not_equal": "!=", "less": "<", "less_equal": "<=",
                "greater": ">", "greater_equal": ">="}
_LOGICAL = {"logical_and": "&", "logical_or": "|", "logical_xor": "^"}


@dataclass(frozen=True)
class Generated:
    """A generated kernel: its source, its template and the rank of its index space."""

    source: str
    template: str
    """``elementwise`` (one element per lane) or ``rows`` (a row reduction: rows of the
    reduced operand per program, the reduced dim across lanes)."""
    rank: int


ROW_REDUCTIONS = {"reduce_sum": "tl.sum", "reduce_max": "tl.max", "reduce_min": "tl.min"}


def _identity(kind: str, reduction: Operation) -> str:
    """What masked lanes hold: the reduction's identity in its result's dtype."""
    dtype = reduction.type.dtype
    if kind == "reduce_sum":
        return "0"
    if dtype in _FLOATS:
        return "-float('inf')" if kind == "reduce_max" else "float('inf')"
    if dtype == "bool":
        raise Unsupported(f"{kind} of bool")
    info = np.iinfo(numpy_dtype(dtype))
    return str(int(info.min if kind == "reduce_max" else info.max))


def kernel_source(body: Function, mesh_axes: int) -> Generated:
    """The kernel of `body`: a row reduction when its last op reduces the last dim (with
    its elementwise prologue), else an elementwise kernel; `Unsupported` otherwise."""
    last = body.ops[-1] if body.ops else None
    if last is not None and last.name in ROW_REDUCTIONS:
        source, rank = row_reduction_source(body, mesh_axes)
        return Generated(source, "rows", rank)
    if last is not None and last.name.startswith("reduce_"):
        raise Unsupported(f"op {last.name}")
    source, rank = elementwise_source(body, mesh_axes)
    return Generated(source, "elementwise", rank)


def row_reduction_source(body: Function, mesh_axes: int) -> tuple[str, int]:
    """The Triton source of a body ending in a reduction over the last dim of its operand,
    and the rank of that operand's index space (mesh axes included). Each program reduces
    `ROWS` rows of `BLOCK_R` lanes (the reduced dim, masked to `r` with the reduction's
    identity; NaN propagates, as in numpy). Arguments: ``out_ptr, in0_ptr, ..., n_rows, r,
    d0.., s0_0.., ROWS, BLOCK_R``: the output (one element per row, in row order), the
    inputs, the row count, the reduced dim's size, the dims of the rows and each input's
    strides along every dim of the operand."""
    reduction = body.ops[-1]
    assert reduction.result is not None
    (operand,) = reduction.operands
    axes = reduction.attrs["axes"]
    if axes != (operand.type.rank - 1,):
        raise Unsupported(f"{reduction.name} over axes {list(axes)}, not the last")  # type: ignore[arg-type]
    rank = mesh_axes + operand.type.rank
    names: dict[int, str] = {}
    lines: list[str] = []
    for i, arg in enumerate(body.args):
        offset = " + ".join([*(f"i{d} * s{i}_{d}" for d in range(rank - 1)),
                             f"cols * s{i}_{rank - 1}"])
        lines.append(f"a{i} = tl.load(in{i}_ptr + ({offset}), mask=mask).to({_compute(arg)})")
        names[id(arg)] = f"a{i}"
    lines += _op_lines(body.ops[:-1], names, "[ROWS, BLOCK_R]")
    out = _compute(reduction.result)
    value = names[id(operand)]
    kind = reduction.name
    lines.append(f"x = tl.where(mask, {value}.to({out}), {_identity(kind, reduction)})")
    lines.append(f"total = {ROW_REDUCTIONS[kind]}(x, axis=1)")
    if kind != "reduce_sum" and operand.type.dtype in _FLOATS:
        lines.append("total = tl.where(tl.max((x != x).to(tl.int32), axis=1) > 0, "
                     "float('nan'), total)")
    ints = ["n_rows", "r", *(f"d{d}" for d in range(rank - 1)),
            *(f"s{i}_{d}" for i in range(len(body.args)) for d in range(rank))]
    args = ", ".join(["out_ptr", *(f"in{i}_ptr" for i in range(len(body.args))), *ints,
                      "ROWS: tl.constexpr", "BLOCK_R: tl.constexpr"])
    unravel = ["rem = rows"]
    for d in reversed(range(1, rank - 1)):
        unravel += [f"i{d} = rem % d{d}", f"rem = rem // d{d}"]
    if rank > 1:
        unravel.append("i0 = rem")
    block_r = 1 << max(0, operand.type.shape[-1] - 1).bit_length()
    pointers = [("out_ptr", reduction.result),
                *((f"in{i}_ptr", a) for i, a in enumerate(body.args))]
    source = "\n".join([
        *_header(body, _signature(pointers, ints), {"ROWS": max(1, 4096 // block_r),
                                                    "BLOCK_R": block_r}),
        f"def {body.name}({args}):",
        "    row = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)",
        "    rows = row[:, None]",
        "    cols = tl.arange(0, BLOCK_R)[None, :]",
        "    mask = (rows < n_rows) & (cols < r)",
        *(f"    {line}" for line in unravel),
        *(f"    {line}" for line in lines),
        "    tl.store(out_ptr + row, total.to(out_ptr.dtype.element_ty), mask=row < n_rows)",
        "",
    ])
    return source, rank


def elementwise_source(body: Function, mesh_axes: int) -> tuple[str, int]:
    """The Triton source of `body`'s kernel and the rank of the index space it runs over
    (the simulated mesh's `mesh_axes` leading axes plus the result's dims). Arguments:
    ``out_ptr, in0_ptr, ..., n, d0.., s0_0.., BLOCK``: the output, the inputs in the body's
    argument order, the element count, the output's dims and each input's element strides
    along them."""
    (result,) = body.results
    rank = mesh_axes + result.type.rank
    names: dict[int, str] = {}
    lines: list[str] = []
    for i, arg in enumerate(body.args):
        dtype = _compute(arg)
        offset = " + ".join(f"i{d} * s{i}_{d}" for d in range(rank)) or "offs * 0"
        lines.append(f"a{i} = tl.load(in{i}_ptr + ({offset}), mask=mask).to({dtype})")
        names[id(arg)] = f"a{i}"
    lines += _op_lines(body.ops, names, "[BLOCK]")
    args = ", ".join(["out_ptr", *(f"in{i}_ptr" for i in range(len(body.args))), "n",
                      *(f"d{d}" for d in range(rank)),
                      *(f"s{i}_{d}" for i in range(len(body.args)) for d in range(rank)),
                      "BLOCK: tl.constexpr"])
    unravel = ["rem = offs"]
    for d in reversed(range(1, rank)):
        unravel += [f"i{d} = rem % d{d}", f"rem = rem // d{d}"]
    unravel.append("i0 = rem" if rank else "")
    out = names[id(result)]
    pointers = [("out_ptr", result), *((f"in{i}_ptr", a) for i, a in enumerate(body.args))]
    signature = _signature(pointers, ["n", *(f"d{d}" for d in range(rank)),
                                      *(f"s{i}_{d}" for i in range(len(body.args))
                                        for d in range(rank))])
    source = "\n".join([
        *_header(body, signature, {"BLOCK": 1024}),
        f"def {body.name}({args}):",
        "    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)",
        "    mask = offs < n",
        *(f"    {line}" for line in unravel if line),
        *(f"    {line}" for line in lines),
        f"    tl.store(out_ptr + offs, {out}.to(out_ptr.dtype.element_ty), mask=mask)",
        "",
    ])
    return source, rank


_POINTEE = {"f64": "fp64", "f32": "fp32", "f16": "fp16", "bf16": "bf16", "i64": "i64",
            "i32": "i32", "i16": "i16", "i8": "i8", "u8": "u8", "u16": "u16", "u32": "u32",
            "u64": "u64", "bool": "i1"}


def _op_lines(ops: Sequence[Operation], names: dict[int, str], block: str) -> list[str]:
    """One line per elementwise op (``v<n> = ...``), naming each result in `names`."""
    lines = []
    for n, op in enumerate(ops):
        assert op.result is not None
        names[id(op.result)] = f"v{n}"
        expression = _expression(op, names, block)
        storage = _STORAGE.get(op.result.type.dtype)
        if storage is not None:  # rounded as numpy rounds it, then computed on in fp32
            expression = f"({expression}).to({storage}).to(tl.float32)"
        lines.append(f"v{n} = {expression}")
    return lines


def _signature(pointers: Sequence[tuple[str, Value]], ints: Sequence[str]) -> dict[str, str]:
    return {**{name: f"*{_pointee(v)}" for name, v in pointers}, **dict.fromkeys(ints, "i64")}


def _header(body: Function, signature: dict[str, str], constants: dict[str, int]
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


def _compute(value: Value) -> str:
    dtype = _COMPUTE.get(value.type.dtype)
    if dtype is None:
        raise Unsupported(f"dtype {value.type.dtype}")
    return dtype


def _expression(op: Operation, names: dict[int, str], block: str) -> str:
    """The Triton expression of one op of a body, cast to its result's compute type."""
    assert op.result is not None
    out = _compute(op.result)
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
        if name == "divide" and op.result.type.dtype not in _FLOATS:
            raise Unsupported("integer divide")
        return f"({_ARITHMETIC[name](cast)}).to({out})"
    if name in _FLOAT_MATH:
        if op.result.type.dtype not in _FLOATS:
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
    names = {"float64": "f64", "float32": "f32", "float16": "f16", "int64": "i64",
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
            c in (0.5, -1) and op.result.type.dtype not in _FLOATS):
        raise Unsupported(f"power {c!r}")
    return f"({forms[c]}).to({out})"
