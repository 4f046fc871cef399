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

import math
from collections.abc import Callable, Sequence
from functools import partial

from dtensor_compiler.ir import factors
from dtensor_compiler.ir.attrs import AttrKind, AttrSpec, int_attr
from dtensor_compiler.ir.core import Operation, Value
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
    VJPRule,
    register,
)
from dtensor_compiler.ir.sharding import ReduceOp
from dtensor_compiler.ir.types import TensorType
from dtensor_compiler.ir.vjp import VJPContext, differentiable

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


def _axes(op: Operation) -> tuple[int, ...]:
    axes = op.attrs["axes"]
    assert isinstance(axes, tuple)
    return axes


def _kept_shape(op: Operation) -> tuple[int, ...]:
    """The result's shape with the reduced axes kept as 1."""
    return reduced_shape(op.operands[0].type.shape, _axes(op), True)


def _sum_vjp(ad: VJPContext, op: Operation, g: Value) -> list[Value | None]:
    x = op.operands[0]
    spread = ad.broadcast(ad.reshape(g, _kept_shape(op)), x.type.shape)
    return [ad.to_operand(spread, x)]


def _flattened(ad: VJPContext, x: Value, axes: tuple[int, ...]
               ) -> tuple[Value, Callable[[Value], Value]]:
    """`x` with `axes` moved last and merged into one, and the function that puts a value
    of that flat shape back into `x`'s."""
    kept = [d for d in range(x.type.rank) if d not in axes]
    perm = tuple(kept) + tuple(axes)
    moved = ad.emit("transpose", [x], {"perm": perm})
    outer = tuple(x.type.shape[d] for d in kept)
    flat = ad.reshape(moved, outer + (math.prod(x.type.shape[d] for d in axes),))
    inverse = tuple(sorted(range(len(perm)), key=perm.__getitem__))

    def back(v: Value) -> Value:
        return ad.emit("transpose", [ad.reshape(v, moved.type.shape)], {"perm": inverse})
    return flat, back


def _shifted(ad: VJPContext, v: Value, axis: int, fill: float) -> Value:
    """`v` moved one place along `axis` (towards higher indices), `fill` entering first."""
    n = v.type.shape[axis]
    stop = tuple(n - 1 if d == axis else s for d, s in enumerate(v.type.shape))
    head = ad.emit("slice", [v], {"start": (0,) * v.type.rank, "stop": stop,
                                  "step": (1,) * v.type.rank})
    edge = tuple(1 if d == axis else s for d, s in enumerate(v.type.shape))
    return ad.emit("concatenate", [ad.full(edge, v.type.dtype, fill), head], {"axis": axis})


def _exclusive_products(ad: VJPContext, v: Value, axis: int) -> Value:
    """The product of the elements before each one along `axis` (1 for the first)."""
    return _shifted(ad, ad.emit("cumprod", [v], {"axis": axis}), axis, 1.0)


def _flip(ad: VJPContext, v: Value, axis: int) -> Value:
    return ad.emit("reverse", [v], {"axes": (axis,)})


def _extreme_vjp(ad: VJPContext, op: Operation, g: Value) -> list[Value | None]:
    """max/min: the whole cotangent goes to the first extreme element along the reduced axes
    (in C order), the one numpy's argmax/argmin picks, ties and NaNs included. It is found
    with a ``reduce_min`` of the positions where the operand equals the result, so a
    sharded reduced axis communicates only a result-sized statistic."""
    x, out = op.operands[0], op.result
    assert out is not None
    if not differentiable(x.type):
        return [None]
    axes = _axes(op)
    kept = _kept_shape(op)
    position: Value | None = None
    stride = 1
    for axis in sorted(axes, reverse=True):
        along = ad.emit("iota", [], {"dimension": axis}, TensorType("i64", x.type.shape))
        if stride != 1:
            along = ad.emit("multiply", [along, ad.scalar(stride, along)])
        position = along if position is None else ad.emit("add", [position, along])
        stride *= x.type.shape[axis]
    if position is None:  # no axes: every element is its own extreme
        return [ad.to_operand(g, x)]
    # a NaN is the extreme of its row (numpy's max propagates it)
    extreme = ad.emit("logical_or", [ad.emit("equal", [x, ad.reshape(out, kept)]),
                                     ad.emit("isnan", [x])])
    candidates = ad.emit("where", [extreme, position, ad.scalar(stride, position)])
    first = ad.emit("reduce_min", [candidates], {"axes": axes, "keepdims": True})
    chosen = ad.emit("equal", [position, first])
    spread = ad.emit("where", [chosen, ad.reshape(g, kept), ad.scalar(0.0, g)])
    return [ad.to_operand(spread, x)]


def _prod_vjp(ad: VJPContext, op: Operation, g: Value) -> list[Value | None]:
    """Each element's cotangent is `g` times the product of the others, taken as the
    products before it times those after it: exact at zeros, without dividing."""
    x = op.operands[0]
    if not differentiable(x.type):
        return [None]
    flat, back = _flattened(ad, x, _axes(op))
    last = flat.type.rank - 1
    if flat.type.shape[last] == 0:
        return [ad.full(x.type.shape, x.type.dtype, 0.0)]
    before = _exclusive_products(ad, flat, last)
    after = _flip(ad, _exclusive_products(ad, _flip(ad, flat, last), last), last)
    others = ad.emit("multiply", [before, after])
    spread = ad.emit("multiply", [others, ad.reshape(g, flat.type.shape[:-1] + (1,))])
    return [ad.to_operand(back(spread), x)]


_REDUCTION_VJPS: dict[ReduceOp, VJPRule] = {
    ReduceOp.SUM: _sum_vjp, ReduceOp.MAX: _extreme_vjp, ReduceOp.MIN: _extreme_vjp,
    ReduceOp.PROD: _prod_vjp,
}


def _define_reduction(kind: ReduceOp) -> OpDef:
    return register(OpDef(
        name=f"reduce_{kind.value}", operands=1, infer=_reduce_infer(kind),
        attrs=(AttrSpec("axes", AttrKind.INTS), KEEPDIMS), sharding=_reduce_rule(kind),
        folds=True, traits=Traits(reduction=kind, commutes_with=frozenset({kind})),
        vjp=_REDUCTION_VJPS.get(kind)))


REDUCTIONS: dict[ReduceOp, OpDef] = {kind: _define_reduction(kind) for kind in ReduceOp}
"""``reduce_sum`` and friends, by the reduction they compute."""


def _arg_infer(ts: Sequence[TensorType], attrs: Attrs, declared: Sequence[TensorType],
               ctx: InferContext) -> list[ResultSig]:
    t = ts[0]
    axis = int_attr(attrs, "axis")
    check_axis(axis, t.rank)
    return [("i64", reduced_shape(t.shape, (axis,), bool(attrs["keepdims"])))]


def _arg_rule(attrs: Attrs, operands: Sequence[TensorType], result: TensorType
              ) -> factors.FactorRule:
    axis = int_attr(attrs, "axis")
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
        axis = int_attr(attrs, "axis")
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


def _reversed_cumsum(ad: VJPContext, v: Value, axis: int) -> Value:
    """The sum of each element and those after it along `axis`."""
    return _flip(ad, ad.emit("cumsum", [_flip(ad, v, axis)], {"axis": axis}), axis)


def _cumsum_vjp(ad: VJPContext, op: Operation, g: Value) -> list[Value | None]:
    """Each element feeds every later prefix: the reversed cumulative sum of `g`."""
    axis = int_attr(op.attrs, "axis")
    return [ad.to_operand(_reversed_cumsum(ad, g, axis), op.operands[0])]


CUMSUM = register(OpDef(name="cumsum", operands=1,
                        infer=_along_axis(partial(accumulated_dtype, ReduceOp.SUM)),
                        attrs=(AttrSpec("axis", AttrKind.INT),), sharding=Factors(_scan_rule),
                        folds=True, traits=Traits(commutes_with=frozenset({ReduceOp.SUM})),
                        vjp=_cumsum_vjp))


def _cumprod_vjp(ad: VJPContext, op: Operation, g: Value) -> list[Value | None]:
    """Element j feeds every prefix product from j on. Before the first zero along the axis
    that is ``sum(g * y from j on) / x[j]``; the first zero itself gets the product of the
    elements before it times ``sum(g[i] * (product of x after it, up to i))``; every element
    after it only feeds prefixes the zero has already made 0. Exact at zeros."""
    x, y = op.operands[0], op.result
    assert y is not None
    if not differentiable(x.type):
        return [None]
    axis = int_attr(op.attrs, "axis")
    one, zero = ad.scalar(1.0, x), ad.scalar(0.0, x)
    is_zero = ad.emit("equal", [x, zero])
    seen = ad.emit("cumsum", [ad.cast(is_zero, "i64")], {"axis": axis})
    before = ad.emit("equal", [seen, ad.scalar(0, seen)])
    first = ad.emit("logical_and", [is_zero, ad.emit("equal", [seen, ad.scalar(1, seen)])])
    plain = ad.emit("divide", [_reversed_cumsum(ad, ad.emit("multiply", [g, y]), axis),
                               ad.emit("where", [is_zero, one, x])])
    leading = ad.emit("cumprod", [ad.emit("where", [before, x, one])], {"axis": axis})
    trailing = ad.emit("cumprod", [ad.emit("where", [ad.emit("logical_or", [before, first]),
                                                       one, x])], {"axis": axis})
    at_zero = ad.emit("multiply", [leading, _reversed_cumsum(
        ad, ad.emit("multiply", [g, trailing]), axis)])
    grad = ad.emit("where", [before, plain, ad.emit("where", [first, at_zero, zero])])
    return [ad.to_operand(grad, x)]


CUMPROD = register(OpDef(name="cumprod", operands=1,
                         infer=_along_axis(partial(accumulated_dtype, ReduceOp.PROD)),
                         attrs=(AttrSpec("axis", AttrKind.INT),), sharding=Factors(_scan_rule),
                         folds=True, traits=Traits(commutes_with=frozenset({ReduceOp.PROD})),
                         vjp=_cumprod_vjp))

SORT_KINDS = ("quicksort", "heapsort", "stable")
"""numpy's sort kinds (``mergesort`` is ``stable``)."""


_SORT_ATTRS = (AttrSpec("axis", AttrKind.INT), AttrSpec("kind", AttrKind.STR, default="quicksort"))

def _sort_vjp(ad: VJPContext, op: Operation, g: Value) -> list[Value | None]:
    """Each sorted position's cotangent goes back to the element sorted there (the order
    ``argsort`` with the same kind gives): a scatter of the flattened rows by their
    permutation, offset by row."""
    x = op.operands[0]
    if not differentiable(x.type):
        return [None]
    axis = int_attr(op.attrs, "axis")
    flat_x, back = _flattened(ad, x, (axis,))
    flat_g, _ = _flattened(ad, g, (axis,))
    n = x.type.shape[axis]
    rows = math.prod(flat_x.type.shape[:-1])
    order = ad.emit("argsort", [ad.reshape(flat_x, (rows, n))],
                    {"axis": 1, "kind": op.attrs["kind"]})
    row = ad.emit("iota", [], {"dimension": 0}, TensorType("i64", (rows, n)))
    target = ad.emit("add", [order, ad.emit("multiply", [row, ad.scalar(n, row)])])
    scattered = ad.emit("scatter_add", [ad.reshape(flat_g, (rows * n,)),
                                        ad.reshape(target, (rows * n,))],
                        {"axis": 0, "size": rows * n})
    return [ad.to_operand(back(ad.reshape(scattered, flat_x.type.shape)), x)]


SORT = register(OpDef(name="sort", operands=1, infer=_along_axis(lambda dtype: dtype, SORT_KINDS),
                      attrs=_SORT_ATTRS, sharding=Factors(_scan_rule), folds=True,
                      vjp=_sort_vjp))
ARGSORT = register(OpDef(name="argsort", operands=1,
                         infer=_along_axis(lambda dtype: "i64", SORT_KINDS), attrs=_SORT_ATTRS,
                         sharding=Factors(_scan_rule), folds=True))
