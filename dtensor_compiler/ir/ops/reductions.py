"""Reductions: ``reduce_sum``, ``reduce_max``, ``reduce_min``, ``reduce_prod``, ``argmax``,
``argmin``, the scans ``cumsum`` and ``cumprod``, and ``sort``/``argsort``.

``reduce_<kind>`` combines the elements along `axes` with numpy's ``sum``/``max``/``min``/
``prod`` (sum and prod widen small integers and bool as numpy does). Sharding a reduced axis
leaves the result with a pending reduction of that kind. ``argmax``/``argmin`` pick the
first index of the extreme value along one `axis`, which must stay whole. ``cumsum`` keeps
the shape and sums every prefix along `axis` (widening as ``sum`` does); the scanned axis
must stay whole, and a pending sum passes through it, since it is linear. ``cumprod`` is its
product counterpart; a pending product passes through it. ``sort`` orders the elements along
`axis` and ``argsort`` gives the indices that would (both with numpy's sort `kind`, which
decides the order of ties); the sorted axis must stay whole.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

from dtensor_compiler.ir import factors
from dtensor_compiler.ir.attrs import AttrKind, AttrSpec
from dtensor_compiler.ir.factors import FactorKind
from dtensor_compiler.ir.inference import accumulated_dtype, check_axis, reduced_shape
from dtensor_compiler.ir.opdef import (
    Attrs,
    Factors,
    InferContext,
    InferFn,
    OpDef,
    ResultSig,
    Traits,
    register,
)
from dtensor_compiler.ir.sharding import ReduceOp
from dtensor_compiler.ir.types import TensorType

KEEPDIMS = AttrSpec("keepdims", AttrKind.BOOL, default=False)


def _reduce_infer(kind: ReduceOp) -> InferFn:
    def infer(ts: Sequence[TensorType], attrs: Attrs, declared: Sequence[TensorType],
              ctx: InferContext) -> list[ResultSig]:
        t = ts[0]
        axes = attrs["axes"]
        assert isinstance(axes, tuple)
        if any(not 0 <= a < t.rank for a in axes) or len(set(axes)) != len(axes):
            raise ValueError(f"bad reduction axes {list(axes)} for rank {t.rank}")
        widens = kind in (ReduceOp.SUM, ReduceOp.PROD)
        dtype = accumulated_dtype(kind, t.dtype) if widens else t.dtype
        return [(dtype, reduced_shape(t.shape, axes, bool(attrs["keepdims"])))]
    return infer


def _reduce_rule(kind: ReduceOp) -> Factors:
    def rule(attrs: Attrs, operands: Sequence[TensorType], result: TensorType
             ) -> factors.FactorRule:
        axes = attrs["axes"]
        assert isinstance(axes, tuple)
        return factors.reduction(operands[0], axes, bool(attrs["keepdims"]),
                                 FactorKind.REDUCED, kind)
    return Factors(rule)


def _define_reduction(kind: ReduceOp) -> OpDef:
    return register(OpDef(
        name=f"reduce_{kind.value}", operands=1, infer=_reduce_infer(kind),
        attrs=(AttrSpec("axes", AttrKind.INTS), KEEPDIMS), sharding=_reduce_rule(kind),
        folds=True, traits=Traits(reduction=kind, commutes_with=frozenset({kind}))))


REDUCTIONS: dict[ReduceOp, OpDef] = {kind: _define_reduction(kind) for kind in ReduceOp}
"""``reduce_sum`` and friends, by the reduction they compute."""


def _arg_infer(ts: Sequence[TensorType], attrs: Attrs, declared: Sequence[TensorType],
               ctx: InferContext) -> list[ResultSig]:
    t = ts[0]
    axis = attrs["axis"]
    assert isinstance(axis, int)
    check_axis(axis, t.rank)
    return [("i64", reduced_shape(t.shape, (axis,), bool(attrs["keepdims"])))]


def _arg_rule(attrs: Attrs, operands: Sequence[TensorType], result: TensorType
              ) -> factors.FactorRule:
    axis = attrs["axis"]
    assert isinstance(axis, int)
    return factors.reduction(operands[0], (axis,), bool(attrs["keepdims"]),
                             FactorKind.NEEDS_REPLICATION)


_ARG_RULE = Factors(_arg_rule)


def _define_arg_reduction(name: str) -> OpDef:
    return register(OpDef(name=name, operands=1, infer=_arg_infer,
                          attrs=(AttrSpec("axis", AttrKind.INT), KEEPDIMS),
                          sharding=_ARG_RULE, folds=True))


ARGMAX = _define_arg_reduction("argmax")
ARGMIN = _define_arg_reduction("argmin")


def _along_axis(result_dtype: Callable[[str], str], kinds: tuple[str, ...] = ()) -> InferFn:
    """Inference of an op that works along one `axis` and keeps the shape (the scans, the
    sorts): the result dtype from the operand's; with `kinds`, the `kind` attribute must be
    one of them."""
    def infer(ts: Sequence[TensorType], attrs: Attrs, declared: Sequence[TensorType],
              ctx: InferContext) -> list[ResultSig]:
        t = ts[0]
        axis = attrs["axis"]
        assert isinstance(axis, int)
        check_axis(axis, t.rank)
        if kinds and attrs["kind"] not in kinds:
            raise ValueError(f"sort kind {attrs['kind']!r} is not one of {list(kinds)}")
        return [(result_dtype(t.dtype), t.shape)]
    return infer


def _scan_rule(attrs: Attrs, operands: Sequence[TensorType], result: TensorType
               ) -> factors.FactorRule:
    b = factors.RuleBuilder()
    dims = [b.dim(s, FactorKind.NEEDS_REPLICATION) if i == attrs["axis"] else b.dim(s)
            for i, s in enumerate(operands[0].shape)]
    return b.build([dims], dims)


CUMSUM = register(OpDef(name="cumsum", operands=1,
                        infer=_along_axis(partial(accumulated_dtype, ReduceOp.SUM)),
                        attrs=(AttrSpec("axis", AttrKind.INT),), sharding=Factors(_scan_rule),
                        folds=True, traits=Traits(commutes_with=frozenset({ReduceOp.SUM}))))


CUMPROD = register(OpDef(name="cumprod", operands=1,
                         infer=_along_axis(partial(accumulated_dtype, ReduceOp.PROD)),
                         attrs=(AttrSpec("axis", AttrKind.INT),), sharding=Factors(_scan_rule),
                         folds=True, traits=Traits(commutes_with=frozenset({ReduceOp.PROD}))))

SORT_KINDS = ("quicksort", "heapsort", "stable")
"""numpy's sort kinds (``mergesort`` is ``stable``)."""


_SORT_ATTRS = (AttrSpec("axis", AttrKind.INT), AttrSpec("kind", AttrKind.STR, default="quicksort"))

SORT = register(OpDef(name="sort", operands=1, infer=_along_axis(lambda dtype: dtype, SORT_KINDS),
                      attrs=_SORT_ATTRS, sharding=Factors(_scan_rule), folds=True))
ARGSORT = register(OpDef(name="argsort", operands=1,
                         infer=_along_axis(lambda dtype: "i64", SORT_KINDS), attrs=_SORT_ATTRS,
                         sharding=Factors(_scan_rule), folds=True))
