"""Contractions: ``matmul`` (numpy's, with broadcast batch dims) and explicit ``einsum``.

Both are linear in each operand. Sharding a contracted dim leaves the result with a pending
sum over those mesh dims.
"""

from __future__ import annotations

from collections.abc import Sequence

from dtensor_compiler.ir import factors
from dtensor_compiler.ir.attrs import AttrKind, AttrSpec
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


def _swap_last_two(ad: VJPContext, v: Value) -> Value:
    perm = tuple(range(v.type.rank - 2)) + (v.type.rank - 1, v.type.rank - 2)
    return ad.emit("transpose", [v], {"perm": perm})


def _matmul_vjp(ad: VJPContext, op: Operation, g: Value) -> list[Value | None]:
    """``ga = g @ b^T`` and ``gb = a^T @ g`` on the operands as matrices (a vector is a row
    of ``a`` or a column of ``b``, as numpy's matmul treats it), summed over broadcast batch
    dims."""
    a, b = op.operands
    a2 = a if a.type.rank >= 2 else ad.reshape(a, (1,) + a.type.shape)
    b2 = b if b.type.rank >= 2 else ad.reshape(b, b.type.shape + (1,))
    g2 = ad.reshape(g, matmul_shape(a2.type.shape, b2.type.shape))
    ga = gb = None
    if ad.wants(0) and differentiable(a.type):
        ga = ad.emit("matmul", [g2, _swap_last_two(ad, b2)])
        ga = ad.reshape(ad.unbroadcast(ga, a2.type.shape), a.type.shape)
    if ad.wants(1) and differentiable(b.type):
        gb = ad.emit("matmul", [_swap_last_two(ad, a2), g2])
        gb = ad.reshape(ad.unbroadcast(gb, b2.type.shape), b.type.shape)
    return [None if ga is None else ad.to_operand(ga, a),
            None if gb is None else ad.to_operand(gb, b)]


MATMUL = register(OpDef(
    name="matmul", operands=2, infer=_matmul, folds=True, traits=_LINEAR, vjp=_matmul_vjp,
    sharding=Factors(lambda attrs, ops, result: factors.matmul(ops[0], ops[1], result))))


def _einsum(ts: Sequence[TensorType], attrs: Attrs, declared: Sequence[TensorType],
            ctx: InferContext) -> list[ResultSig]:
    spec = attrs["spec"]
    assert isinstance(spec, str)
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
    spec = attrs["spec"]
    assert isinstance(spec, str)
    subs, out = parse_einsum(spec, len(operands))
    return factors.einsum(subs, out, operands)


def _einsum_vjp(ad: VJPContext, op: Operation, g: Value) -> list[Value | None]:
    """Operand i's cotangent is the einsum of the result's cotangent with the other operands
    onto i's letters; a letter only operand i has (summed away) is broadcast back."""
    spec = op.attrs["spec"]
    assert isinstance(spec, str)
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
