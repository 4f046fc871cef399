"""Triton source for a fused kernel body: an elementwise, a row or a contraction kernel.

`kernel_source(body)` writes the kernel of a ``kernel`` op's body function (the fuse pass's
groups), or says why it cannot (`Unsupported`). The kernel is named after the body.

- *elementwise* (no reductions): each program handles `BLOCK` consecutive elements of the
  output (contiguous, `rank` dims including the simulated mesh's leading axes); it unravels
  each element's index (int64) and loads every input at ``sum(index[d] * stride[d])``, with
  a stride of 0 along the dims the input is broadcast over, so any broadcasting, any rank and
  any strided view need no copy.
- *rows* (row reductions among the ops, `ir.fusion.row_space`): each program holds `ROWS`
  whole rows of the body's row space as a ``[ROWS, BLOCK_R]`` tile, so reductions over a row
  and the ops after them (softmax's max, exp, sum and division; layernorm's two means and the
  normalization; argmax) run in one kernel without writing anything in between.
- *contraction* (a matmul or einsum with its epilogue): `triton_contraction`.

Values are computed in fp32 for fp16 and bf16 (the math functions want fp32, the GPU too),
each op's result rounded to its fp16 or bf16 dtype as numpy rounds it, and in their own dtype
otherwise; every op's result is cast to its IR dtype's compute type, so the kernel follows
numpy's type promotion as the IR records it, and the store casts to the output's dtype.
(Triton's interpreter rounds to bf16 toward zero, a GPU to nearest as numpy does, so under
the interpreter bf16 results may be an ulp off.)

The ops' expressions are `triton_ops`'s. This module generates text; it imports neither torch
nor triton.
"""

from __future__ import annotations

from dtensor_compiler.ir.core import Function
from dtensor_compiler.ir.fusion import contraction, row_reduction, row_space
from dtensor_compiler.runtime.triton_contraction import contraction_source
from dtensor_compiler.runtime.triton_ops import (
    Generated,
    Unsupported,
    compute_type,
    header,
    op_lines,
    signature,
)

MAX_ROW = 1 << 16
"""The longest row a row kernel holds in one program; a longer one runs op by op."""


def kernel_source(body: Function, mesh_axes: int) -> Generated:
    """The kernel of `body`: a contraction kernel when it holds a contraction
    (`triton_contraction`), a row kernel when it holds row reductions, else an elementwise
    kernel; `Unsupported` for what none covers."""
    for op in body.ops:
        if op.name.startswith("reduce_") and not row_reduction(op):
            raise Unsupported(f"{op.name} over axes {op.attrs.get('axes')}")
    if any(contraction(op) is not None for op in body.ops):
        (result,) = body.results
        return Generated(contraction_source(body, mesh_axes), "contraction",
                         mesh_axes + result.type.rank)
    if any(row_reduction(op) for op in body.ops):
        source, rank = rows_source(body, mesh_axes)
        return Generated(source, "rows", rank)
    source, rank = elementwise_source(body, mesh_axes)
    return Generated(source, "elementwise", rank)


def body_row_space(body: Function) -> tuple[int, ...]:
    """The row space of a row kernel's body (`ir.fusion.row_space`); `Unsupported` if none."""
    space = row_space(body.ops[::-1])
    if space is None:
        raise Unsupported("a body whose values lie on no one row space")
    return space


def rows_source(body: Function, mesh_axes: int) -> tuple[str, int]:
    """The Triton source of a body holding row reductions, and the rank of its row space
    (mesh axes included). Each program holds `ROWS` whole rows of `BLOCK_R` lanes (the row
    space's last dim, masked to `r`): it loads every input at its strides, computes every op
    on the tile, each row reduction over the lanes (masked lanes hold its identity; NaN
    propagates through max and min, as in numpy) kept as one value per row, and stores the
    root: the whole tile, or one value per row. Arguments: ``out_ptr, in0_ptr, ..., n_rows,
    r, d0.., s0_0.., ROWS, BLOCK_R``: the output (row-major over the row space, or one
    element per row), the inputs, the row count, the row length, the dims of the rows and
    each input's strides along every dim of the row space."""
    space = body_row_space(body)
    if space[-1] > MAX_ROW:
        raise Unsupported(f"a row of {space[-1]} elements (the most is {MAX_ROW})")
    if space[-1] == 0 and any(op.name != "reduce_sum" for op in body.ops if row_reduction(op)):
        raise Unsupported("a max or min over no elements")  # (numpy raises: op by op does)
    rank = mesh_axes + len(space)
    (result,) = body.results
    names: dict[int, str] = {}
    lines: list[str] = []
    for i, arg in enumerate(body.args):
        offset = " + ".join([*(f"i{d} * s{i}_{d}" for d in range(rank - 1)),
                             f"cols * s{i}_{rank - 1}"])
        lines.append(f"a{i} = tl.load(in{i}_ptr + ({offset}), mask=mask).to({compute_type(arg)})")
        names[id(arg)] = f"a{i}"
    lines += op_lines(body.ops, names, "[ROWS, BLOCK_R]")
    whole = result.owner is not None and not row_reduction(result.owner) \
        and result.type.shape == space
    store = ("tl.store(out_ptr + (rows * r + cols), {}, mask=mask)" if whole else
             "tl.store(out_ptr + (rows + cols * 0), {}, mask=(rows < n_rows) & (cols == 0))")
    lines.append(store.format(f"{names[id(result)]}.to(out_ptr.dtype.element_ty)"))
    ints = ["n_rows", "r", *(f"d{d}" for d in range(rank - 1)),
            *(f"s{i}_{d}" for i in range(len(body.args)) for d in range(rank))]
    args = ", ".join(["out_ptr", *(f"in{i}_ptr" for i in range(len(body.args))), *ints,
                      "ROWS: tl.constexpr", "BLOCK_R: tl.constexpr"])
    unravel = ["rem = rows"]
    for d in reversed(range(1, rank - 1)):
        unravel += [f"i{d} = rem % d{d}", f"rem = rem // d{d}"]
    if rank > 1:
        unravel.append("i0 = rem")
    block_r = 1 << max(0, space[-1] - 1).bit_length()
    pointers = [("out_ptr", result), *((f"in{i}_ptr", a) for i, a in enumerate(body.args))]
    source = "\n".join([
        *header(body, signature(pointers, ints), {"ROWS": max(1, 4096 // block_r),
                                                    "BLOCK_R": block_r}),
        f"def {body.name}({args}):",
        "    rows = (tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS))[:, None]",
        "    cols = tl.arange(0, BLOCK_R)[None, :]",
        "    mask = (rows < n_rows) & (cols < r)",
        *(f"    {line}" for line in unravel),
        *(f"    {line}" for line in lines),
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
        dtype = compute_type(arg)
        offset = " + ".join(f"i{d} * s{i}_{d}" for d in range(rank)) or "offs * 0"
        lines.append(f"a{i} = tl.load(in{i}_ptr + ({offset}), mask=mask).to({dtype})")
        names[id(arg)] = f"a{i}"
    lines += op_lines(body.ops, names, "[BLOCK]")
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
    types = signature(pointers, ["n", *(f"d{d}" for d in range(rank)),
                                 *(f"s{i}_{d}" for i in range(len(body.args))
                                   for d in range(rank))])
    source = "\n".join([
        *header(body, types, {"BLOCK": 1024}),
        f"def {body.name}({args}):",
        "    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)",
        "    mask = offs < n",
        *(f"    {line}" for line in unravel if line),
        *(f"    {line}" for line in lines),
        f"    tl.store(out_ptr + offs, {out}.to(out_ptr.dtype.element_ty), mask=mask)",
        "",
    ])
    return source, rank
