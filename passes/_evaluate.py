"""Numpy reference semantics of global-shape ops, for constant folding.

`evaluate` computes an op's result from its operands' values, cast to the op's result dtype,
or returns None for ops it does not evaluate (sources, ``relayout``, collectives).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from dtensor_compiler.ir.core import Operation
from dtensor_compiler.ir.opdefs import BINARY_UFUNCS, REDUCTIONS, UNARY_UFUNCS
from dtensor_compiler.ir.types import numpy_dtype

Evaluator = Callable[[Operation, Sequence[np.ndarray]], np.ndarray]

_REDUCE: dict[str, Callable[..., np.ndarray]] = {
    "sum": np.sum, "max": np.max, "min": np.min, "prod": np.prod,
}


def _einsum(op: Operation, args: Sequence[np.ndarray]) -> np.ndarray:
    return np.einsum(op.attrs["spec"], *args)


def _reduction(kind: str) -> Evaluator:
    def evaluate(op: Operation, args: Sequence[np.ndarray]) -> np.ndarray:
        return _REDUCE[kind](args[0], axis=tuple(op.attrs["axes"]),
                             keepdims=bool(op.attrs["keepdims"]))
    return evaluate


def _argreduce(reduce: Callable[..., np.ndarray]) -> Evaluator:
    def evaluate(op: Operation, args: Sequence[np.ndarray]) -> np.ndarray:
        return reduce(args[0], axis=op.attrs["axis"], keepdims=bool(op.attrs["keepdims"]))
    return evaluate


def _slice(op: Operation, args: Sequence[np.ndarray]) -> np.ndarray:
    a = op.attrs
    return args[0][tuple(slice(b, e, s) for b, e, s in zip(a["start"], a["stop"], a["step"]))]


_EVALUATORS: dict[str, Evaluator] = {
    **{name: (lambda op, args: getattr(np, op.name)(*args))
       for name in UNARY_UFUNCS + BINARY_UFUNCS},
    **{name: _reduction(kind) for name, kind in REDUCTIONS.items()},
    "where": lambda op, args: np.where(*args),
    "astype": lambda op, args: args[0],
    "matmul": lambda op, args: np.matmul(*args),
    "einsum": _einsum,
    "argmax": _argreduce(np.argmax),
    "argmin": _argreduce(np.argmin),
    "transpose": lambda op, args: np.transpose(args[0], op.attrs["perm"]),
    "reshape": lambda op, args: np.reshape(args[0], op.type.shape),
    "broadcast_to": lambda op, args: np.broadcast_to(args[0], op.type.shape),
    "concatenate": lambda op, args: np.concatenate(args, axis=op.attrs["axis"]),
    "slice": _slice,
    "take": lambda op, args: np.take(args[0], args[1], axis=op.attrs["axis"]),
}


def evaluate(op: Operation, args: Sequence[np.ndarray]) -> np.ndarray | None:
    """The value of `op`'s result given its operands' values, or None if it cannot be
    evaluated here."""
    fn = _EVALUATORS.get(op.name)
    if fn is None:
        return None
    try:
        with np.errstate(all="ignore"):
            out = fn(op, args)
    except (IndexError, ValueError):
        return None  # e.g. an index out of range: left for the program to report at run time
    return np.asarray(out, dtype=numpy_dtype(op.type.dtype)).reshape(op.type.shape)
