"""`grad`, `value_and_grad` and `stop_gradient`: reverse-mode derivatives of numpy functions.

Inside a compiled function (on traced arrays) they trace the function into the program and
append its derivative (see `tracing.autodiff`), so one compiled step holds the forward and the
backward pass and the planner chooses their collectives together. On numpy arrays and
DTensors they compile the call (once per argument signature, like `dtc.compile`) and run it.

As in JAX: `argnums` is an int (one gradient) or a tuple (a tuple of gradients, in that order);
an argument may be a nesting of tuples, lists and dicts of arrays, and its gradient has the
same structure (at top level, one program is compiled per structure of the arguments);
the function must return a floating-point scalar (with ``has_aux=True``, a pair of it and
anything else, returned alongside); integer inputs have no gradient. Violations raise
`GradientError` at the user's line.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from dtensor_compiler import tracing
from dtensor_compiler.compile import _NUMBERS, CompiledFunction
from dtensor_compiler.errors import GradientError
from dtensor_compiler.tracing.autodiff import stop_gradient_traced, value_and_grad_traced
from dtensor_compiler.tracing.location import user_location
from dtensor_compiler.tracing.outputs import flatten
from dtensor_compiler.tracing.recorder import Recorder
from dtensor_compiler.tracing.tracer import TracedArray


def _checked_argnums(argnums: object) -> int | tuple[int, ...]:
    """`argnums` as an int or a tuple of ints (numpy integers too); GradientError at the
    user's line for anything else (a bool, a float, an empty tuple)."""
    def index(i: object) -> int:
        if isinstance(i, (bool, np.bool_)):
            raise TypeError
        return operator.index(i)  # type: ignore[arg-type]

    try:
        if isinstance(argnums, (tuple, list)):
            if argnums:
                return tuple(index(i) for i in argnums)
        else:
            return index(argnums)
    except TypeError:
        pass
    raise GradientError(f"argnums must be an int or a non-empty tuple of ints, got "
                        f"{argnums!r}", user_location())


def _positions(argnums: int | tuple[int, ...], count: int) -> tuple[int, ...]:
    positions = (argnums,) if isinstance(argnums, int) else argnums
    bad = [i for i in positions if not -count <= i < count]
    if bad:
        raise GradientError(f"argnums {bad[0]} is out of range for {count} arguments",
                            user_location())
    return tuple(i % count for i in positions)


def _numbers_as_arrays(i: int, arg: Any) -> Any:
    """Argument `i` with every Python number in it (or it itself) a 0-d array."""
    try:
        leaves, tree = flatten(arg)
    except TypeError as e:
        raise GradientError(f"grad cannot take argument {i}: {e}") from None
    return tree.unflatten([np.asarray(x) if type(x) in _NUMBERS else x for x in leaves])


def _recorder(args: Sequence[Any]) -> Recorder | None:
    """The recorder of a traced array among `args` or in the tuples, lists and dicts they
    hold (a dict of traced parameters), or None outside a trace."""
    stack = list(args)
    while stack:
        a = stack.pop()
        if tracing.is_traced(a):
            return a.recorder
        if isinstance(a, (tuple, list)):
            stack.extend(a)
        elif isinstance(a, dict):
            stack.extend(a.values())
    return None


def value_and_grad(fn: Callable[..., Any], argnums: int | tuple[int, ...] = 0,
                   has_aux: bool = False) -> Callable[..., Any]:
    """A function returning ``(value, gradient)`` (``((value, aux), gradient)`` with
    `has_aux`), the gradient of `fn` with respect to the arguments at `argnums`."""
    argnums = _checked_argnums(argnums)
    compiled: dict[str, CompiledFunction] = {}

    def traced(rec: Recorder, *args: Any, **kwargs: Any) -> Any:
        positions = _positions(argnums, len(args))
        out, aux, grads = value_and_grad_traced(fn, positions, has_aux, args, rec, kwargs)
        gradient = grads[0] if isinstance(argnums, int) else tuple(grads)
        return ((out, aux) if has_aux else out), gradient

    def flat(*args: Any) -> tuple[Any, ...]:
        rec = _recorder(args)
        if rec is None:
            raise GradientError("grad has no array to differentiate with respect to: the "
                                "arguments at argnums hold none")
        value, gradient = traced(rec, *args)
        parts = list(value) if has_aux else [value]
        return (*parts, *((gradient,) if isinstance(argnums, int) else gradient))

    def call(*args: Any, **kwargs: Any) -> Any:
        rec = _recorder(args)
        if rec is not None:
            return traced(rec, *args, **kwargs)
        if kwargs:
            raise GradientError(f"keyword arguments {sorted(kwargs)}: a grad called on arrays "
                                "compiles the call, whose arrays go positionally (inside a "
                                "compiled function they are passed on, not differentiated)",
                                user_location())
        positions = _positions(argnums, len(args))
        # a number differentiated is an array, not a constant of the program
        call_args = [_numbers_as_arrays(i, a) if i in positions else a
                     for i, a in enumerate(args)]
        if "f" not in compiled:
            flat.__name__ = f"value_and_grad_{getattr(fn, '__name__', 'fn')}"
            flat.__wrapped__ = fn  # type: ignore[attr-defined]  # (errors name fn's line)
            compiled["f"] = CompiledFunction(flat)
        out = compiled["f"](*call_args)
        values = out if isinstance(out, tuple) else (out,)
        head = 2 if has_aux else 1
        value = tuple(values[:head]) if has_aux else values[0]
        rest = values[head:]
        return value, rest[0] if isinstance(argnums, int) else tuple(rest)

    call.__name__ = f"value_and_grad({getattr(fn, '__name__', 'fn')})"
    call.__doc__ = fn.__doc__
    return call


def grad(fn: Callable[..., Any], argnums: int | tuple[int, ...] = 0,
         has_aux: bool = False) -> Callable[..., Any]:
    """A function returning the gradient of `fn` with respect to the arguments at `argnums`
    (``(gradient, aux)`` with `has_aux`)."""
    both = value_and_grad(fn, argnums, has_aux)

    def call(*args: Any, **kwargs: Any) -> Any:
        value, gradient = both(*args, **kwargs)
        return (gradient, value[1]) if has_aux else gradient

    call.__name__ = f"grad({getattr(fn, '__name__', 'fn')})"
    call.__doc__ = fn.__doc__
    return call


def stop_gradient(x: Any) -> Any:
    """`x`, as a constant for the derivatives taken around it. Outside a trace it returns `x`
    itself (there is nothing to differentiate there)."""
    if isinstance(x, TracedArray):
        return stop_gradient_traced(x, x.recorder)
    return x
