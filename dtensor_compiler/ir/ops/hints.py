"""Layout hints: ``cotangent``.

``cotangent(g, x)`` is `g`, the derivative of a program's output with respect to `x`, which
has `x`'s shape. Reverse-mode differentiation puts one on every derivative it takes of a
value (`tracing.autodiff`): layout propagation gives `g` the layout `x` has when nothing
else has decided it first, since a derivative is best laid out like its value (a
sequence-sharded activation's gradient is sequence-sharded), and removes the op before it
chooses any layout for good. It exists only in global IR.
"""

from __future__ import annotations

from collections.abc import Sequence

from dtensor_compiler.ir.core import Level, Operation, Value
from dtensor_compiler.ir.opdef import (
    Attrs,
    InferContext,
    LayoutHint,
    OpDef,
    ResultSig,
    register,
)
from dtensor_compiler.ir.types import TensorType
from dtensor_compiler.ir.vjp import VJPContext


def _cotangent(ts: Sequence[TensorType], attrs: Attrs, declared: Sequence[TensorType],
               ctx: InferContext) -> list[ResultSig]:
    g, x = ts
    if g.shape != x.shape:
        raise ValueError(f"a cotangent has its value's shape {list(x.shape)}, got "
                         f"{list(g.shape)}")
    return [(g.dtype, g.shape)]


def _cotangent_vjp(ad: VJPContext, op: Operation, g: Value) -> list[Value | None]:
    return [g, None]


COTANGENT = register(OpDef(
    name="cotangent", operands=2, infer=_cotangent, sharding=LayoutHint(), folds=False,
    levels=frozenset({Level.GLOBAL}), vjp=_cotangent_vjp))
