"""Shape ops: ``reshape``, ``transpose``, ``broadcast_to``, ``concatenate`` and ``reverse``.

They move or copy elements without arithmetic, so pending reductions pass through them
(``concatenate`` lets through only a pending sum shared by every operand). ``reshape`` and
``broadcast_to`` take their result shape from the declared result type.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import prod

from dtensor_compiler.ir import factors
from dtensor_compiler.ir.attrs import AttrKind, AttrSpec, int_attr
from dtensor_compiler.ir.core import Operation, Value
from dtensor_compiler.ir.factors import RuleBuilder
from dtensor_compiler.ir.inference import (
    broadcast_shapes,
    check_axis,
    declared_type,
    ufunc_result_dtype,
)
from dtensor_compiler.ir.opdef import (
    Attrs,
    Factors,
    InferContext,
    OpDef,
    ResultSig,
    Traits,
    register,
    same_type,
)
from dtensor_compiler.ir.ops.elementwise import BROADCASTING
from dtensor_compiler.ir.sharding import ReduceOp
from dtensor_compiler.ir.types import TensorType
from dtensor_compiler.ir.vjp import VJPContext

STRUCTURAL = Traits(commutes_with=frozenset(ReduceOp))
"""Ops that only move or copy elements: every pending reduction passes through."""


def _reshape(ts: Sequence[TensorType], attrs: Attrs, declared: Sequence[TensorType],
             ctx: InferContext) -> list[ResultSig]:
    target = declared_type(declared)
    if prod(target.shape) != prod(ts[0].shape):
        raise ValueError(f"cannot reshape {list(ts[0].shape)} into {list(target.shape)}")
    if target.dtype != ts[0].dtype:
        raise ValueError(f"reshape cannot change the dtype {ts[0].dtype} to {target.dtype}")
    return [(target.dtype, target.shape)]


def _reshape_vjp(ad: VJPContext, op: Operation, g: Value) -> list[Value | None]:
    return [ad.reshape(g, op.operands[0].type.shape)]


RESHAPE = register(OpDef(
    name="reshape", operands=1, infer=_reshape, declared_type=True, folds=True,
    traits=STRUCTURAL, identity=same_type, vjp=_reshape_vjp,
    sharding=Factors(lambda attrs, ops, result: factors.reshape(ops[0].shape, result.shape))))


def _transpose(ts: Sequence[TensorType], attrs: Attrs, declared: Sequence[TensorType],
               ctx: InferContext) -> list[ResultSig]:
    perm = attrs["perm"]
    assert isinstance(perm, tuple)
    if sorted(perm) != list(range(ts[0].rank)):
        raise ValueError(f"perm {list(perm)} is not a permutation of rank {ts[0].rank}")
    return [(ts[0].dtype, tuple(ts[0].shape[p] for p in perm))]


def _transpose_rule(attrs: Attrs, operands: Sequence[TensorType], result: TensorType
                    ) -> factors.FactorRule:
    b = RuleBuilder()
    dims = [b.dim(s) for s in operands[0].shape]
    perm = attrs["perm"]
    assert isinstance(perm, tuple)
    return b.build([dims], [dims[p] for p in perm])


def _identity_permutation(op: Operation) -> bool:
    return same_type(op) and op.attrs["perm"] == tuple(range(op.type.rank))


def _transpose_vjp(ad: VJPContext, op: Operation, g: Value) -> list[Value | None]:
    perm = op.attrs["perm"]
    assert isinstance(perm, tuple)
    inverse = tuple(sorted(range(len(perm)), key=perm.__getitem__))
    return [ad.transpose(g, inverse)]


TRANSPOSE = register(OpDef(name="transpose", operands=1, infer=_transpose,
                           attrs=(AttrSpec("perm", AttrKind.INTS),),
                           sharding=Factors(_transpose_rule), folds=True, traits=STRUCTURAL,
                           identity=_identity_permutation, vjp=_transpose_vjp))


def _broadcast_to(ts: Sequence[TensorType], attrs: Attrs, declared: Sequence[TensorType],
                  ctx: InferContext) -> list[ResultSig]:
    target = declared_type(declared)
    if broadcast_shapes(ts[0].shape, target.shape) != target.shape:
        raise ValueError(f"cannot broadcast {list(ts[0].shape)} to {list(target.shape)}")
    return [(ts[0].dtype, target.shape)]


def _broadcast_to_vjp(ad: VJPContext, op: Operation, g: Value) -> list[Value | None]:
    return [ad.unbroadcast(g, op.operands[0].type.shape)]


BROADCAST_TO = register(OpDef(name="broadcast_to", operands=1, infer=_broadcast_to,
                              declared_type=True, sharding=BROADCASTING, folds=True,
                              traits=STRUCTURAL, identity=same_type, vjp=_broadcast_to_vjp))


def _concatenate(ts: Sequence[TensorType], attrs: Attrs, declared: Sequence[TensorType],
                 ctx: InferContext) -> list[ResultSig]:
    axis = int_attr(attrs, "axis")
    first = ts[0]
    check_axis(axis, first.rank)
    dtype = first.dtype
    for t in ts[1:]:
        if t.rank != first.rank or any(
            a != b for i, (a, b) in enumerate(zip(t.shape, first.shape)) if i != axis
        ):
            raise ValueError(
                f"concatenate operands {list(first.shape)} and {list(t.shape)} differ "
                f"outside axis {axis}"
            )
        dtype = ufunc_result_dtype("add", (dtype, t.dtype))
    total = sum(t.shape[axis] for t in ts)
    return [(dtype, first.shape[:axis] + (total,) + first.shape[axis + 1:])]


def _concatenate_rule(attrs: Attrs, operands: Sequence[TensorType], result: TensorType
                      ) -> factors.FactorRule:
    b = RuleBuilder()
    axis = attrs["axis"]
    res = [() if i == axis else b.dim(s) for i, s in enumerate(result.shape)]
    return b.build([res for _ in operands], res)


def _concatenate_vjp(ad: VJPContext, op: Operation, g: Value) -> list[Value | None]:
    """Each operand's part of `g`, cast back to its dtype."""
    axis = int_attr(op.attrs, "axis")
    out: list[Value | None] = []
    at = 0
    for i, v in enumerate(op.operands):
        n = v.type.shape[axis]
        if not ad.wants(i):
            out.append(None)
            at += n
            continue
        start = tuple(at if d == axis else 0 for d in range(g.type.rank))
        stop = tuple(at + n if d == axis else s for d, s in enumerate(g.type.shape))
        part = ad.emit("slice", [g], {"start": start, "stop": stop, "step": (1,) * g.type.rank})
        out.append(ad.to_operand(part, v))
        at += n
    return out


CONCATENATE = register(OpDef(name="concatenate", operands=None, infer=_concatenate,
                             attrs=(AttrSpec("axis", AttrKind.INT),),
                             sharding=Factors(_concatenate_rule), folds=True,
                             traits=Traits(commutes_with=frozenset({ReduceOp.SUM})),
                             vjp=_concatenate_vjp))
"""Operands joined along `axis`, which must stay whole."""


def _reverse(ts: Sequence[TensorType], attrs: Attrs, declared: Sequence[TensorType],
             ctx: InferContext) -> list[ResultSig]:
    axes = attrs["axes"]
    assert isinstance(axes, tuple)
    if any(not 0 <= a < ts[0].rank for a in axes) or len(set(axes)) != len(axes):
        raise ValueError(f"bad reverse axes {list(axes)} for rank {ts[0].rank}")
    return [(ts[0].dtype, ts[0].shape)]


def _reverse_rule(attrs: Attrs, operands: Sequence[TensorType], result: TensorType
                  ) -> factors.FactorRule:
    b = RuleBuilder()
    axes = attrs["axes"]
    assert isinstance(axes, tuple)
    dims = [() if i in axes else b.dim(s) for i, s in enumerate(operands[0].shape)]
    return b.build([dims], dims)


def _no_axes(op: Operation) -> bool:
    return op.attrs["axes"] == ()


def _reverse_vjp(ad: VJPContext, op: Operation, g: Value) -> list[Value | None]:
    return [ad.emit("reverse", [g], {"axes": op.attrs["axes"]})]


REVERSE = register(OpDef(name="reverse", operands=1, infer=_reverse,
                         attrs=(AttrSpec("axes", AttrKind.INTS),),
                         sharding=Factors(_reverse_rule), folds=True, traits=STRUCTURAL,
                         identity=_no_axes, vjp=_reverse_vjp))
"""The elements in reverse order along each of `axes` (numpy's ``flip``), which must stay
whole: a device's block of a reversed dim lies on the mirrored device."""
