"""Two ops defined by the tests through the public registration API, to exercise what no
built-in op has yet: effects, and results other than one.

- ``test_print`` writes its operand to `PRINTED` (an effect), has no result and no factor rule:
  it needs its operand whole.
- ``test_halves`` splits a vector into its two halves (two results), needing its operand whole.

`conftest.py` imports this module, so the ops exist in every test (and count for the
completeness test like any other op).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dtensor_compiler.ir.attrs import AttrKind, AttrSpec
from dtensor_compiler.ir.core import Operation
from dtensor_compiler.ir.opdef import (
    Attrs,
    Barrier,
    Effect,
    InferContext,
    OpDef,
    ResultSig,
    register,
)
from dtensor_compiler.ir.types import TensorType
from dtensor_compiler.runtime.executor import ExecContext, KernelFn
from dtensor_compiler.runtime.kernels_numpy import NUMPY_KERNELS

PRINTED: list[tuple[int, np.ndarray]] = []
"""What ``test_print`` ops wrote: (tag, the stacked operand)."""


def _no_results(ts: Sequence[TensorType], attrs: Attrs, declared: Sequence[TensorType],
                ctx: InferContext) -> list[ResultSig]:
    return []


PRINT = register(OpDef(name="test_print", operands=1, results=0, infer=_no_results,
                       attrs=(AttrSpec("tag", AttrKind.INT, default=0),), sharding=Barrier(),
                       folds=False, effects=frozenset({Effect.WRITE})))


def _halves(ts: Sequence[TensorType], attrs: Attrs, declared: Sequence[TensorType],
            ctx: InferContext) -> list[ResultSig]:
    (n,) = ts[0].shape
    if n % 2:
        raise ValueError(f"test_halves needs an even length, got {n}")
    return [(ts[0].dtype, (n // 2,)), (ts[0].dtype, (n // 2,))]


HALVES = register(OpDef(name="test_halves", operands=1, results=2, infer=_halves,
                        sharding=Barrier(), folds=False))


@NUMPY_KERNELS.register(PRINT)
def _print(op: Operation, ctx: ExecContext) -> KernelFn:
    tag = op.attrs["tag"]
    assert isinstance(tag, int)

    def run(x: np.ndarray) -> None:
        PRINTED.append((tag, np.array(x)))
    return run


@NUMPY_KERNELS.register(HALVES)
def _split(op: Operation, ctx: ExecContext) -> KernelFn:
    def run(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        half = x.shape[-1] // 2
        return x[..., :half], x[..., half:]
    return run
