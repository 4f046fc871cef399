"""Fused kernels: ``kernel``, one group of per-device ops run as one launch.

The fuse pass (`passes/fuse.py`) groups chains of elementwise ops of a localized module (with
the row reductions among them, `ir.fusion`) and moves each group into a function of its
own, the group's *body*; a ``kernel`` op in the entry function runs it. Its operands are the
body's arguments and its result is the body's result, type for type (the verifier checks
both):

```
%3 = kernel %0, %1 {body = step_k0_subtract_exp} : f32[4,8] @ {x, -}
...
func @step_k0_subtract_exp(%a0: f32[4,8] @ {x, -}, %a1: f32[4,1] @ {x, -}) -> (f32[4,8] @ {x, -}) {
  %0 = subtract %a0, %a1 : f32[4,8] @ {x, -}
  %1 = exp %0 : f32[4,8] @ {x, -}
  return %1
}
```

A backend with a code generator compiles the body into one kernel; any other backend runs
the body's ops one by one (`runtime.executor`), so a fused module runs everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence

from dtensor_compiler.ir.attrs import AttrKind, AttrSpec
from dtensor_compiler.ir.core import Level, Operation
from dtensor_compiler.ir.opdef import (
    Attrs,
    Barrier,
    InferContext,
    OpDef,
    PaddingRead,
    ResultSig,
    register,
)
from dtensor_compiler.ir.types import TensorType


def _declared(ts: Sequence[TensorType], attrs: Attrs, declared: Sequence[TensorType],
              ctx: InferContext) -> list[ResultSig]:
    return [(t.dtype, t.shape) for t in declared]


def _no_padding_reads(op: Operation) -> list[PaddingRead]:
    return []  # elementwise ops read padding only into padding; the row reductions of a
    # body reduce values the mask-padding pass masked before fusion


KERNEL = register(OpDef(
    name="kernel", operands=None, infer=_declared, sharding=Barrier(), folds=False,
    attrs=(AttrSpec("body", AttrKind.STR),), declared_type=True,
    levels=frozenset({Level.LOCAL}), reads_padding=_no_padding_reads, calls="body"))
