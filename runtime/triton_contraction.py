"""Triton source for a contraction group: one tiled matmul kernel with its epilogue fused.

A contraction group (`ir.fusion`) is a ``matmul`` or two-operand ``einsum`` followed by
elementwise ops on values of its result's shape. Its letters fall in four roles: *batch*
(in both operands and the result; the simulated mesh's axes are batch dims too), *m* (the
first operand and the result), *n* (the second and the result) and *k* (both operands, not
the result: summed). Each role may hold several letters, so ``bsh,hd->bsd`` and any batched
matmul are one kernel, with no operand copied or transposed: every letter has its size and
each array its stride along it.

Each program computes one ``[BM, BN]`` tile of one batch element: it walks k in steps of
`BK`, loads the two operand tiles (masked at the edges, so no size need be a multiple of a
block), accumulates their ``tl.dot`` in fp32 (fp64 for fp64 operands; fp32 dots with
``input_precision="ieee"``, exact as numpy's), rounds it to the result's dtype, runs the
epilogue's ops on the tile and stores it. Tiles are visited in groups of `GROUP` rows of
tiles so neighbouring programs share operand tiles in the cache. Under the interpreter
(`UPCAST`), bf16 operands are widened to fp32 before the dot, which the interpreter computes
wrongly on bf16; blocks are at least 16 wide, as GPU dots need.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dtensor_compiler.ir.core import Function, Operation
from dtensor_compiler.ir.fusion import contraction
from dtensor_compiler.runtime.triton_ops import (
    STORAGE,
    Unsupported,
    compute_type,
    header,
    op_lines,
    signature,
)


@dataclass(frozen=True)
class Dim:
    """One dim of a contraction's index space."""

    name: str
    """Its name in the kernel: ``p<axis>`` for a mesh axis, ``l<letter>`` for a letter."""
    role: str
    """``batch``, ``m``, ``n`` or ``k``."""
    letter: str | None
    """Its einsum letter; None for a mesh axis."""
    mesh_axis: int | None


@dataclass(frozen=True)
class Plan:
    """What the kernel of a contraction group computes, for its source and its launcher."""

    op: Operation
    """The contraction."""
    subscripts: tuple[str, str, str]
    dims: tuple[Dim, ...]
    """Batch dims (mesh axes first, then letters in the result's order), m, n (in the
    result's order) and k dims (in the first operand's order)."""
    a: int
    b: int
    """The body arguments that are the contraction's operands."""
    loaded: tuple[int, ...]
    """The body arguments the epilogue reads."""

    def role(self, *roles: str) -> list[Dim]:
        return [d for d in self.dims if d.role in roles]


def contraction_plan(body: Function, mesh_axes: int) -> Plan:
    """The plan of a contraction group's body; `Unsupported` if it is none."""
    found = [op for op in body.ops if contraction(op) is not None]
    if len(found) != 1:
        raise Unsupported("a body with more than one contraction")
    (op,) = found
    subscripts = contraction(op)
    assert subscripts is not None
    sa, sb, out = subscripts
    args = [id(v) for v in body.args]
    if any(id(v) not in args for v in op.operands):
        raise Unsupported("a contraction of values computed in its body")
    dims = [Dim(f"p{d}", "batch", None, d) for d in range(mesh_axes)]
    dims += [Dim(f"l{c}", "batch", c, None) for c in out if c in sa and c in sb]
    dims += [Dim(f"l{c}", "m", c, None) for c in out if c in sa and c not in sb]
    dims += [Dim(f"l{c}", "n", c, None) for c in out if c in sb and c not in sa]
    dims += [Dim(f"l{c}", "k", c, None) for c in sa if c in sb and c not in out]
    epilogue = [e for e in body.ops if e is not op]
    used = {id(v) for e in epilogue for v in e.operands}
    loaded = tuple(i for i, v in enumerate(body.args) if id(v) in used)
    return Plan(op, subscripts, tuple(dims), args.index(id(op.operands[0])),
                args.index(id(op.operands[1])), loaded)


def _terms(dims: Sequence[Dim], stride: str, zero: str) -> str:
    """``i<dim> * <stride>_<dim>`` summed over `dims`, or `zero` when there are none."""
    return " + ".join(f"i{d.name} * {stride}_{d.name}" for d in dims) or zero


def _unravel(dims: Sequence[Dim], flat: str) -> list[str]:
    """Lines splitting the flat index `flat` into ``i<dim>`` for each of `dims` (row-major)."""
    if len(dims) < 2:
        return [f"i{d.name} = {flat}" for d in dims]
    lines = [f"rem = {flat}"]
    for d in reversed(dims[1:]):
        lines += [f"i{d.name} = rem % z_{d.name}", f"rem = rem // z_{d.name}"]
    return [*lines, f"i{dims[0].name} = rem"]


def _product(dims: Sequence[Dim]) -> str:
    return " * ".join(f"z_{d.name}" for d in dims) or "1"


def contraction_source(body: Function, mesh_axes: int) -> str:
    """The Triton source of a contraction group's kernel. Arguments: ``out_ptr, in0_ptr, ...``
    (the output, row-major over the mesh axes and the result's dims, and the body's
    arguments), then every dim's size ``z_<dim>``, the first operand's strides ``sa_<dim>``
    along its batch, m and k dims, the second's ``sb_<dim>`` along batch, k and n, the
    output's ``so_<dim>`` and each epilogue input's ``s<i>_<dim>`` along batch, m and n
    dims, then the constexprs ``BM, BN, BK, GROUP, UPCAST``."""
    plan = contraction_plan(body, mesh_axes)
    op = plan.op
    assert op.result is not None
    batch, m, n, k = (plan.role(r) for r in ("batch", "m", "n", "k"))
    out = op.result.type.dtype
    accumulate = "tl.float64" if out == "f64" else "tl.float32"
    dot_type = {"f64": "tl.float64", "f32": "tl.float32"}.get(out) or STORAGE[out]
    precision = ', input_precision="ieee"' if out == "f32" else ""
    upcast = "\n".join(f"        {v} = {v}.to(tl.float32)" for v in ("x", "y"))
    lines = [
        "pid = tl.program_id(0).to(tl.int64)",
        f"M = {_product(m)}",
        f"N = {_product(n)}",
        f"K = {_product(k)}",
        "tiles_m = tl.cdiv(M, BM)",
        "tiles_n = tl.cdiv(N, BN)",
        "tiles = tiles_m * tiles_n",
        "t = pid % tiles",
        "first = (t // (GROUP * tiles_n)) * GROUP",  # the first tile row of t's group
        "rows = tl.minimum(tiles_m - first, GROUP)",
        "rm = (first + (t % (GROUP * tiles_n)) % rows) * BM + tl.arange(0, BM)",
        "rn = ((t % (GROUP * tiles_n)) // rows) * BN + tl.arange(0, BN)",
        *_unravel(batch, "pid // tiles"),
        *_unravel(m, "rm"),
        *_unravel(n, "rn"),
        *(f"i{d.name} = i{d.name}[:, None]" for d in m),
        *(f"i{d.name} = i{d.name}[None, :]" for d in n),
        f"a_rows = {_terms(batch + m, 'sa', 'rm[:, None] * 0')}",
        f"b_cols = {_terms(batch + n, 'sb', 'rn[None, :] * 0')}",
        f"acc = tl.zeros([BM, BN], {accumulate})",
        "for k0 in range(0, K, BK):",
        "    rk = k0 + tl.arange(0, BK)",
        *(f"    {line}" for line in _unravel(k, "rk")),
        f"    ka = {_terms(k, 'sa', 'rk * 0')}",
        f"    kb = {_terms(k, 'sb', 'rk * 0')}",
        f"    x = tl.load(in{plan.a}_ptr + (a_rows + ka[None, :]), "
        "mask=(rm[:, None] < M) & (rk[None, :] < K), other=0.0)",
        f"    y = tl.load(in{plan.b}_ptr + (b_cols + kb[:, None]), "
        "mask=(rk[:, None] < K) & (rn[None, :] < N), other=0.0)",
        f"    x = x.to({dot_type})",
        f"    y = y.to({dot_type})",
    ]
    if out == "bf16":
        lines += ["    if UPCAST:  # the interpreter's bf16 dot is wrong", *upcast.splitlines()]
    lines.append(f"    acc += tl.dot(x, y, out_dtype={accumulate}{precision})")
    names = {id(op.result): "vacc"}
    value = f"acc.to({compute_type(op.result)})"
    if out in STORAGE:
        value = f"acc.to({STORAGE[out]}).to(tl.float32)"  # rounded as numpy rounds it
    lines += [f"vacc = {value}", "omask = (rm[:, None] < M) & (rn[None, :] < N)",
              "tile = rm[:, None] * 0 + rn[None, :] * 0  # offsets span the tile"]
    for i in plan.loaded:
        arg = body.args[i]
        offset = _terms(batch + m + n, f"s{i}", "0") + " + tile"
        lines.append(f"a{i} = tl.load(in{i}_ptr + ({offset}), mask=omask)"
                     f".to({compute_type(arg)})")
        names[id(arg)] = f"a{i}"
    lines += op_lines([e for e in body.ops if e is not op], names, "[BM, BN]")
    (result,) = body.results
    lines.append(f"tl.store(out_ptr + ({_terms(batch + m + n, 'so', '0')} + tile), "
                 f"{names[id(result)]}.to(out_ptr.dtype.element_ty), mask=omask)")
    ints = [*(f"z_{d.name}" for d in plan.dims),
            *(f"sa_{d.name}" for d in batch + m + k), *(f"sb_{d.name}" for d in batch + k + n),
            *(f"so_{d.name}" for d in batch + m + n),
            *(f"s{i}_{d.name}" for i in plan.loaded for d in batch + m + n)]
    pointers = [("out_ptr", result), *((f"in{i}_ptr", v) for i, v in enumerate(body.args))]
    constants = {"BM": 64, "BN": 64, "BK": 32, "GROUP": 8, "UPCAST": 0}
    arguments = ", ".join(["out_ptr", *(f"in{i}_ptr" for i in range(len(body.args))), *ints,
                           *(f"{c}: tl.constexpr" for c in constants)])
    return "\n".join([*header(body, signature(pointers, ints), constants),
                      f"def {body.name}({arguments}):",
                      *(f"    {line}" for line in lines), ""])
