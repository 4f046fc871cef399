"""Optimizers as pure functions over parameters, gradients and state: `sgd`, `momentum`,
`adam` and `adamw`.

Each returns an `Optimizer`, a pair of functions:

- ``init(params, layouts=None)``: the state for `params` (a sequence or dict of arrays or
  DTensors). A state tensor takes the layout of its parameter, or the one `layouts` gives
  (same structure as `params`; for example each parameter's layout with its first dim also
  split over ``dp``: optimizer state sharded over data parallelism, ZeRO-1).
- ``update(params, grads, state)``: ``(new_params, new_state)``, plain numpy arithmetic, to
  call inside a compiled training step (``@dtc.compile``), where the planner places it with
  the forward and backward pass; on numpy arrays it runs as numpy.

The update rules are the usual ones (Adam: Kingma and Ba, with bias correction; AdamW:
Loshchilov and Hutter, decoupled weight decay).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dtensor_compiler.dtensor import DistributedValue
from dtensor_compiler.layout import Layout

Tree = Sequence[Any] | Mapping[str, Any]
"""Parameters, gradients or a state field: a sequence or a dict of arrays."""


@dataclass(frozen=True)
class Optimizer:
    """`init` and `update` of one optimizer (see the module docstring)."""

    init: Callable[..., dict[str, Any]]
    update: Callable[[Tree, Tree, dict[str, Any]], tuple[Tree, dict[str, Any]]]


def _map(fn: Callable[..., Any], *trees: Any) -> Any:
    """`fn` applied elementwise over trees of one structure (a dict, or a list or tuple)."""
    first = trees[0]
    if isinstance(first, Mapping):
        return {k: fn(*(t[k] for t in trees)) for k in first}
    return type(first)(fn(*xs) for xs in zip(*trees))


def _zeros_like(params: Tree, layouts: Tree | None) -> Tree:
    """Zeros of each parameter's shape and dtype, in its layout or the one given."""
    from dtensor_compiler.api import copy_to_mesh

    def zeros(p: Any, layout: Layout | None = None) -> Any:
        if isinstance(p, DistributedValue):
            return copy_to_mesh(np.zeros(p.shape, p.dtype), layout or p.layout)
        z = np.zeros_like(p)
        return z if layout is None else copy_to_mesh(np.asarray(z), layout)

    return _map(zeros, params) if layouts is None else _map(zeros, params, layouts)


def sgd(lr: float) -> Optimizer:
    """``p - lr * g``; no state."""
    def init(params: Tree, layouts: Tree | None = None) -> dict[str, Any]:
        return {}

    def update(params: Tree, grads: Tree, state: dict[str, Any]) -> tuple[Tree, dict[str, Any]]:
        return _map(lambda p, g: p - lr * g, params, grads), state
    return Optimizer(init, update)


def momentum(lr: float, beta: float = 0.9) -> Optimizer:
    """Heavy-ball momentum: ``v = beta * v + g``, ``p - lr * v``."""
    def init(params: Tree, layouts: Tree | None = None) -> dict[str, Any]:
        return {"velocity": _zeros_like(params, layouts)}

    def update(params: Tree, grads: Tree, state: dict[str, Any]) -> tuple[Tree, dict[str, Any]]:
        velocity = _map(lambda v, g: beta * v + g, state["velocity"], grads)
        return _map(lambda p, v: p - lr * v, params, velocity), {"velocity": velocity}
    return Optimizer(init, update)


def adamw(lr: float, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
          weight_decay: float = 0.01) -> Optimizer:
    """Adam with decoupled weight decay: the moments ``m``, ``v`` with bias correction over
    the step count (an int64 scalar in the state), ``p - lr * (m_hat / (sqrt(v_hat) + eps) +
    weight_decay * p)``."""
    def init(params: Tree, layouts: Tree | None = None) -> dict[str, Any]:
        return {"m": _zeros_like(params, layouts), "v": _zeros_like(params, layouts),
                "step": np.zeros((), np.int64)}

    def update(params: Tree, grads: Tree, state: dict[str, Any]) -> tuple[Tree, dict[str, Any]]:
        step = state["step"] + 1
        m = _map(lambda m, g: b1 * m + (1 - b1) * g, state["m"], grads)
        v = _map(lambda v, g: b2 * v + (1 - b2) * g * g, state["v"], grads)
        c1 = 1 / (1 - b1 ** step)
        c2 = 1 / (1 - b2 ** step)

        def apply(p: Any, m: Any, v: Any) -> Any:
            # the corrections in the parameter's dtype, so float32 training stays float32
            k1, k2 = c1.astype(p.dtype), c2.astype(p.dtype)
            return p - lr * ((m * k1) / (np.sqrt(v * k2) + eps) + weight_decay * p)
        return _map(apply, params, m, v), {"m": m, "v": v, "step": step}
    return Optimizer(init, update)


def adam(lr: float, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> Optimizer:
    """Adam: `adamw` without weight decay."""
    return adamw(lr, b1, b2, eps, weight_decay=0.0)
