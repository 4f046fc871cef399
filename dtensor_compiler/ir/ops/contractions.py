"""Contractions: ``matmul`` (numpy's, with broadcast batch dims) and explicit ``einsum``.

Both are linear in each operand. Sharding a contracted dim leaves the result with a pending
sum over those mesh dims.
"""

from __future__ import annotations

from collections.abc import Sequence

from dtensor_compiler.ir import factors
from dtensor_compiler.ir.attrs import AttrKind, AttrSpec, str_attr
from dtensor_compiler.ir.core import Operation, Value
from dtensor_compiler.ir.inference import (
    matmul_result_dtype,
    matmul_shape,
    parse_einsum,
    ufunc_result_dtype,
)
from dtensor_compiler.ir.opdef import (
    ALL_OPERANDS,
    Attrs,
    Factors,
    InferContext,
    OpDef,
    ResultSig,
    Traits,
    register,
)
from dtensor_compiler.ir.types import TensorType
from dtensor_compiler.ir.vjp import VJPContext, differentiable

_LINEAR = Traits(linear_in=ALL_OPERANDS)


def _matmul(ts: Sequence[TensorType], attrs: Attrs, declared: Sequence[TensorType],
            ctx: InferContext) -> list[ResultSig]:
    return [(matmul_result_dtype(ts[0].dtype, ts[1].dtype),
             matmul_shape(ts[0].shape, ts[1].shape))]


def matmul_letters(a: TensorType, b: TensorType) -> tuple[str, str, str]:
    """numpy's matmul of `a` and `b` as einsum subscripts (operands, result): a vector is a
    row of ``a`` or a column of ``b``; batch dims broadcast from the right, and a batch dim
    of size 1 against a bigger one gets a letter of its own."""
    shape = matmul_shape(a.shape, b.shape)
    batch = len(shape) - (a.rank > 1) - (b.rank > 1)
    shared = "abcdefghijlopqrstuvwxyz"[:batch]  # not k, m or n, the matrix letters
    own = iter("ABCDEFGHIJKLMNOPQRSTUVW")

    def letters(t: TensorType, matrix: str) -> str:
        if t.rank == 1:
            return matrix[1] if matrix == "mk" else matrix[0]
        dims = t.shape[:-2]
        lead = len(shared) - len(dims)
        return "".join(shared[lead + i] if n == shape[lead + i] else next(own)
                       for i, n in enumerate(dims)) + matrix

    out = shared + ("m" if a.rank > 1 else "") + ("n" if b.rank > 1 else "")
    return letters(a, "mk"), letters(b, "kn"), out


def _matmul_vjp(ad: VJPContext, op: Operation, g: Value) -> list[Value | None]:
    """``ga = g @ b^T`` and ``gb = a^T @ g`` as one einsum each, straight on the operands (no
    transposes in between, so a layout the forward already made of an operand serves the
    backward too), summing over the batch dims an operand was broadcast along."""
    a, b = op.operands
    sa, sb, out = matmul_letters(a.type, b.type)
    cotangents: list[Value | None] = []
    for i, (v, mine, other, w) in enumerate(((a, sa, sb, b), (b, sb, sa, a))):
        if not ad.wants(i) or not differentiable(v.type):
            cotangents.append(None)
            continue
        kept = "".join(c for c in mine if c in out or c in other)
        gi = ad.emit("einsum", [g, w], {"spec": f"{out},{other}->{kept}"})
        cotangents.append(ad.to_operand(ad.reshape(gi, v.type.shape), v))
    return cotangents


MATMUL = register(OpDef(
    name="matmul", operands=2, infer=_matmul, folds=True, traits=_LINEAR, vjp=_matmul_vjp,
    sharding=Factors(lambda attrs, ops, result: factors.matmul(ops[0], ops[1], result))))


def _einsum(ts: Sequence[TensorType], attrs: Attrs, declared: Sequence[TensorType],
            ctx: InferContext) -> list[ResultSig]:
    spec = str_attr(attrs, "spec")
    ins, out = parse_einsum(spec, len(ts))
    sizes: dict[str, int] = {}
    for sub, t in zip(ins, ts):
        if len(sub) != t.rank:
            raise ValueError(f"einsum subscript {sub!r} does not fit rank-{t.rank} operand")
        if len(set(sub)) != len(sub):
            raise ValueError(f"einsum subscript {sub!r} repeats a letter (diagonals unsupported)")
        for c, s in zip(sub, t.shape):
            if sizes.setdefault(c, s) != s:
                raise ValueError(f"einsum letter {c!r} has sizes {sizes[c]} and {s}")
    if any(c not in sizes for c in out):
        raise ValueError(f"einsum output {out!r} names a letter no operand has")
    dtype = ts[0].dtype
    for t in ts[1:]:
        dtype = ufunc_result_dtype("multiply", (dtype, t.dtype))
    return [(dtype, tuple(sizes[c] for c in out))]


def _einsum_rule(attrs: Attrs, operands: Sequence[TensorType], result: TensorType
                 ) -> factors.FactorRule:
    spec = str_attr(attrs, "spec")
    subs, out = parse_einsum(spec, len(operands))
    return factors.einsum(subs, out, operands)


def _einsum_vjp(ad: VJPContext, op: Operation, g: Value) -> list[Value | None]:
    """Operand i's cotangent is the einsum of the result's cotangent with the other operands
    onto i's letters; a letter only operand i has (summed away) is broadcast back."""
    spec = str_attr(op.attrs, "spec")
    subs, out = parse_einsum(spec, len(op.operands))
    cotangents: list[Value | None] = []
    for i, v in enumerate(op.operands):
        if not ad.wants(i) or not differentiable(v.type):
            cotangents.append(None)
            continue
        others = [s for j, s in enumerate(subs) if j != i]
        present = set(out).union(*others)
        kept = "".join(c for c in subs[i] if c in present)
        gi = ad.emit("einsum", [g] + [w for j, w in enumerate(op.operands) if j != i],
                     {"spec": ",".join([out, *others]) + "->" + kept})
        if kept != subs[i]:
            gi = ad.reshape(gi, tuple(n if c in present else 1
                                      for c, n in zip(subs[i], v.type.shape)))
            gi = ad.broadcast(gi, v.type.shape)
        cotangents.append(ad.to_operand(gi, v))
    return cotangents


EINSUM = register(OpDef(name="einsum", operands=None, infer=_einsum,
                        attrs=(AttrSpec("spec", AttrKind.STR),), sharding=Factors(_einsum_rule),
                        folds=True, traits=_LINEAR, vjp=_einsum_vjp))
"""``einsum`` with an explicit spec (``"ij,jk->ik"``), no ellipsis or repeated letters. Its
dtype is the operands' promotion under ``multiply`` (numpy's einsum has no loops for the
ml_dtypes floats; kernels compute those in float32)."""
