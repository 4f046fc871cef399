"""Contractions: ``matmul`` (numpy's, with broadcast batch dims) and explicit ``einsum``.

Both are linear in each operand. Sharding a contracted dim leaves the result with a pending
sum over those mesh dims.
"""

from __future__ import annotations

from collections.abc import Sequence

from dtensor_compiler.ir import factors
from dtensor_compiler.ir.attrs import AttrKind, AttrSpec
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

_LINEAR = Traits(linear_in=ALL_OPERANDS)


def _matmul(ts: Sequence[TensorType], attrs: Attrs, declared: Sequence[TensorType],
            ctx: InferContext) -> list[ResultSig]:
    return [(matmul_result_dtype(ts[0].dtype, ts[1].dtype),
             matmul_shape(ts[0].shape, ts[1].shape))]


MATMUL = register(OpDef(
    name="matmul", operands=2, infer=_matmul, folds=True, traits=_LINEAR,
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


EINSUM = register(OpDef(name="einsum", operands=None, infer=_einsum,
                        attrs=(AttrSpec("spec", AttrKind.STR),), sharding=Factors(_einsum_rule),
                        folds=True, traits=_LINEAR))
"""``einsum`` with an explicit spec (``"ij,jk->ik"``), no ellipsis or repeated letters. Its
dtype is the operands' promotion under ``multiply`` (numpy's einsum has no loops for the
ml_dtypes floats; kernels compute those in float32)."""
