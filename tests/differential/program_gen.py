"""Random numpy programs for differential testing.

A `Program` is a list of `Step`s applied to a growing list of values; `Program.__call__` runs it
on whatever arrays it is given, so the same program runs as plain numpy (the reference) and
traced by `dtc.compile`. Every op the tracer and the planner support should appear here: when
you add an op or a pass, add a step kind.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import ml_dtypes
import numpy as np
from hypothesis import strategies as st

import dtensor_compiler as dtc

Shape = tuple[int, ...]
MESH_SHAPES: tuple[tuple[int, ...], ...] = ((2,), (4,), (8,), (2, 2), (2, 4), (4, 2), (2, 2, 2))
DIM_SIZES = (8, 16, 1, 3, 5, 7, 13)
"""Even sizes, and sizes no mesh of `MESH_SHAPES` divides: primes, sizes below the shard
count (empty blocks), 1."""


@dataclass
class Step:
    """One line of a program: `fn(env)` computes value `name` from earlier named values."""

    name: str
    text: str
    fn: Callable[[dict], object]


@dataclass
class Program:
    inputs: list[tuple[str, Shape]] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)

    @property
    def input_shapes(self) -> list[Shape]:
        return [s for _, s in self.inputs]

    def __call__(self, *arrays):
        env = {name: a for (name, _), a in zip(self.inputs, arrays)}
        for step in self.steps:
            env[step.name] = step.fn(env)
        outs = tuple(env[n] for n in self.outputs)
        return outs[0] if len(outs) == 1 else outs

    def __repr__(self) -> str:
        return "Program:\n" + self.text()

    def text(self) -> str:
        lines = [f"{n}: {list(s)}" for n, s in self.inputs]
        lines += [f"{s.name} = {s.text}" for s in self.steps]
        lines.append(f"return {', '.join(self.outputs)}")
        return "\n".join(lines)


def _softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _relayout_like(x, like):
    """`dtc.relayout_like` inside a compiled function; plain numpy has no layouts."""
    return dtc.relayout_like(x, like) if dtc.tracing.is_traced(x) else x


@st.composite
def programs(draw) -> Program:
    """A random program over 1-2 inputs of rank 2 or 3 (plus weights), with 1-6 steps."""
    rank = draw(st.sampled_from([2, 3]))
    shape0 = tuple(draw(st.sampled_from(DIM_SIZES)) for _ in range(rank))
    prog = Program()
    shapes: dict[str, Shape] = {}

    def new_input(shape: Shape) -> str:
        name = f"a{len(prog.inputs)}"
        prog.inputs.append((name, shape))
        shapes[name] = shape
        return name

    def add(text: str, fn: Callable[[dict], object], shape: Shape) -> None:
        name = f"v{len(prog.steps)}"
        prog.steps.append(Step(name, text, fn))
        shapes[name] = shape

    new_input(shape0)
    if draw(st.booleans()):
        new_input(shape0)
    for _ in range(draw(st.integers(1, 6))):
        x = draw(st.sampled_from(sorted(shapes)))
        s = shapes[x]
        last = len(s) - 1
        kind = draw(st.sampled_from(["unary", "binary", "scalar", "reduce", "transpose",
                                     "softmax", "matmul", "einsum", "slice", "reshape",
                                     "concat", "where", "center", "variance", "take", "argmax",
                                     "stack_split", "expand_squeeze", "astype", "swapaxes",
                                     "bool_matmul", "int8_sum", "cumsum", "bfloat16",
                                     "int8_compare", "any_all", "round", "flip", "roll", "pad",
                                     "triangle", "sort", "norm", "cumprod", "complex_parts",
                                     "mT", "einsum3", "more_ufuncs", "prod",
                                     "relayout_like", "linear", "rmsnorm", "argmax_kept",
                                     "batched_matmul", "repeat", "power"]))
        if kind == "repeat" and prog.steps:
            # an earlier step computed again and added to itself: the tracer records its ops
            # twice, equal ones (simplify merges them; the derivative flows through both)
            earlier = prog.steps[draw(st.integers(0, len(prog.steps) - 1))]
            add(f"({earlier.text}) + {earlier.name}",
                lambda e, step=earlier: step.fn(e) + e[step.name], shapes[earlier.name])
        elif kind == "relayout_like":  # another value's layout, chosen by propagation
            y = draw(st.sampled_from(sorted(n for n, t in shapes.items() if len(t) == len(s))))
            add(f"dtc.relayout_like({x}, {y})", lambda e, x=x, y=y: _relayout_like(e[x], e[y]),
                s)
        elif kind == "unary":
            name = draw(st.sampled_from(["tanh", "exp", "abs", "negative", "square", "sin"]))
            f = getattr(np, name)
            add(f"np.{name}({x} * 0.1)", lambda e, x=x, f=f: f(e[x] * 0.1), s)
        elif kind == "binary":
            y = draw(st.sampled_from(sorted(n for n, t in shapes.items() if t == s)))
            op = draw(st.sampled_from(["add", "subtract", "multiply", "maximum", "fmin",
                                       "logaddexp"]))
            f = getattr(np, op)
            add(f"np.{op}({x}, {y})", lambda e, x=x, y=y, f=f: f(e[x], e[y]), s)
        elif kind == "power":  # an array exponent: the derivative in both operands
            y = draw(st.sampled_from(sorted(n for n, t in shapes.items() if t == s)))
            add(f"np.power(np.abs({x}) + 0.5, {y} * 0.5)",
                lambda e, x=x, y=y: np.power(np.abs(e[x]) + 0.5, e[y] * 0.5), s)
        elif kind == "scalar":
            c = draw(st.sampled_from([0.5, 2.0, -1.5]))
            add(f"{x} * {c} + 1", lambda e, x=x, c=c: e[x] * c + 1, s)
        elif kind == "reduce":
            axis = draw(st.integers(0, last))
            keep = draw(st.booleans())
            red = draw(st.sampled_from(["sum", "max", "mean", "min"]))
            out = tuple(1 if k == axis else d for k, d in enumerate(s)) if keep else tuple(
                d for k, d in enumerate(s) if k != axis)
            if out:
                add(f"{x}.{red}(axis={axis}, keepdims={keep})",
                    lambda e, x=x, a=axis, k=keep, r=red: getattr(e[x], r)(axis=a, keepdims=k),
                    out)
        elif kind == "transpose":
            perm = tuple(draw(st.permutations(range(len(s)))))
            add(f"{x}.transpose({perm})", lambda e, x=x, p=perm: e[x].transpose(p),
                tuple(s[p] for p in perm))
        elif kind == "softmax":
            axis = draw(st.integers(0, last))
            add(f"softmax({x}, axis={axis})", lambda e, x=x, a=axis: _softmax(e[x], a), s)
        elif kind == "matmul":
            w = new_input((s[-1], draw(st.sampled_from(DIM_SIZES))))
            add(f"{x} @ {w}", lambda e, x=x, w=w: e[x] @ e[w], s[:-1] + shapes[w][1:])
        elif kind == "linear":  # a matmul with a bias and relu after it (an epilogue)
            w = new_input((s[-1], draw(st.sampled_from(DIM_SIZES))))
            b = new_input(shapes[w][1:])
            add(f"np.maximum({x} @ {w} + {b}, 0)",
                lambda e, x=x, w=w, b=b: np.maximum(e[x] @ e[w] + e[b], 0),
                s[:-1] + shapes[w][1:])
        elif kind == "batched_matmul" and len(s) >= 2:  # a stack against one matrix or many
            w = new_input((s[0], s[-1], 3) if len(s) == 3 and draw(st.booleans())
                          else (s[-1], 3))
            add(f"{x} @ {w} * 0.5", lambda e, x=x, w=w: (e[x] @ e[w]) * 0.5,
                np.broadcast_shapes(s[:-2], shapes[w][:-2]) + s[-2:-1] + (3,))
        elif kind == "rmsnorm":
            add(f"rmsnorm({x})",
                lambda e, x=x: e[x] / np.sqrt((e[x] * e[x]).mean(axis=-1, keepdims=True)
                                              + 1e-6), s)
        elif kind == "argmax_kept":
            add(f"{x}.argmax(axis=-1, keepdims=True) * 1.0",
                lambda e, x=x: e[x].argmax(axis=-1, keepdims=True) * 1.0, s[:-1] + (1,))
        elif kind == "einsum" and len(s) == 3:
            w = new_input((s[2], draw(st.sampled_from(DIM_SIZES))))
            add(f"np.einsum('abc,cd->abd', {x}, {w})",
                lambda e, x=x, w=w: np.einsum("abc,cd->abd", e[x], e[w]), s[:2] + shapes[w][1:])
        elif kind == "slice":
            axis = draw(st.integers(0, last))
            half = max(1, s[axis] // 2)
            idx = tuple(slice(None) if k != axis else slice(0, half) for k in range(len(s)))
            add(f"{x}[axis {axis}: 0:{half}]", lambda e, x=x, idx=idx: e[x][idx],
                tuple(half if k == axis else d for k, d in enumerate(s)))
        elif kind == "reshape":
            splittable = [k for k, d in enumerate(s) if d % 2 == 0 and d > 2]
            # (a, b) -> (2a, b/2): each block of rows stays one contiguous block of rows
            regroupable = [k for k in range(len(s) - 1) if s[k + 1] % 2 == 0 and s[k + 1] > 2]
            if len(s) >= 2 and draw(st.booleans()):
                k = draw(st.integers(0, len(s) - 2))
                new = s[:k] + (s[k] * s[k + 1],) + s[k + 2:]
            elif regroupable and draw(st.booleans()):
                k = draw(st.sampled_from(regroupable))
                new = s[:k] + (s[k] * 2, s[k + 1] // 2) + s[k + 2:]
            elif splittable:
                k = draw(st.sampled_from(splittable))
                new = s[:k] + (2, s[k] // 2) + s[k + 1:]
            else:
                continue
            add(f"{x}.reshape({new})", lambda e, x=x, n=new: e[x].reshape(n), new)
        elif kind == "concat":
            axis = draw(st.integers(0, last))
            add(f"np.concatenate([{x}, 2 * {x}], axis={axis})",
                lambda e, x=x, a=axis: np.concatenate([e[x], e[x] * 2], axis=a),
                tuple(2 * d if k == axis else d for k, d in enumerate(s)))
        elif kind == "where":
            add(f"np.where({x} > 0, {x}, 0.5 * {x})",
                lambda e, x=x: np.where(e[x] > 0, e[x], 0.5 * e[x]), s)
        elif kind == "center":
            axis = draw(st.integers(0, last))
            add(f"{x} - {x}.mean(axis={axis}, keepdims=True)",
                lambda e, x=x, a=axis: e[x] - e[x].mean(axis=a, keepdims=True), s)
        elif kind == "variance":
            axis = draw(st.integers(0, last))
            fn = draw(st.sampled_from(["var", "std"]))
            out = tuple(d for k, d in enumerate(s) if k != axis)
            if out:
                add(f"{x}.{fn}(axis={axis})",
                    lambda e, x=x, a=axis, f=fn: getattr(e[x], f)(axis=a), out)
        elif kind == "take":
            axis = draw(st.integers(0, last))
            idx = np.array(draw(st.lists(st.integers(0, s[axis] - 1), min_size=1, max_size=4)))
            add(f"np.take({x}, {idx.tolist()}, axis={axis})",
                lambda e, x=x, i=idx, a=axis: np.take(e[x], i, axis=a),
                s[:axis] + idx.shape + s[axis + 1:])
        elif kind == "argmax":
            axis = draw(st.integers(0, last))
            out = tuple(d for k, d in enumerate(s) if k != axis)
            if out:
                add(f"{x}.argmax(axis={axis})", lambda e, x=x, a=axis: e[x].argmax(axis=a), out)
        elif kind == "stack_split":
            axis = draw(st.integers(0, len(s)))
            add(f"sum(np.split(np.stack([{x}, -{x}], axis={axis}), 2, axis={axis}))",
                lambda e, x=x, a=axis: sum(np.split(np.stack([e[x], 0.5 * e[x]], axis=a), 2,
                                                    axis=a)),
                s[:axis] + (1,) + s[axis:])
        elif kind == "expand_squeeze":
            axis = draw(st.integers(0, len(s)))
            add(f"np.squeeze(np.expand_dims({x}, {axis}) * 2, axis={axis})",
                lambda e, x=x, a=axis: np.squeeze(np.expand_dims(e[x], a) * 2, axis=a), s)
        elif kind == "cumsum":
            axis = draw(st.integers(0, last))
            add(f"np.cumsum({x}, axis={axis})", lambda e, x=x, a=axis: np.cumsum(e[x], axis=a),
                s)
        elif kind == "any_all":
            axis = draw(st.integers(0, last))
            fn = draw(st.sampled_from(["any", "all"]))
            out = tuple(d for k, d in enumerate(s) if k != axis)
            if out:
                add(f"np.{fn}({x} > 0, axis={axis}) * 1.0",
                    lambda e, x=x, a=axis, f=fn: getattr(np, f)(e[x] > 0, axis=a) * 1.0, out)
        elif kind == "round":
            d = draw(st.sampled_from([-1, 0, 2]))
            add(f"np.round({x} * 10, {d})", lambda e, x=x, d=d: np.round(e[x] * 10, d), s)
        elif kind == "flip":
            axis = draw(st.integers(0, last))
            add(f"np.flip({x}, {axis})[::-2 on axis 0]",
                lambda e, x=x, a=axis: np.flip(e[x], a)[::-2], (-(-s[0] // 2),) + s[1:])
        elif kind == "roll":
            axis = draw(st.integers(-len(s), last))
            k = draw(st.integers(-20, 20))
            add(f"np.roll({x}, {k}, axis={axis})",
                lambda e, x=x, k=k, a=axis: np.roll(e[x], k, axis=a), s)
        elif kind == "pad":
            axis = draw(st.integers(0, last))
            width = tuple((1, 3) if k == axis else (0, 0) for k in range(len(s)))
            add(f"np.pad({x}, {width}, constant_values=0.5)",
                lambda e, x=x, w=width: np.pad(e[x], w, constant_values=0.5),
                tuple(d + 4 if k == axis else d for k, d in enumerate(s)))
        elif kind == "triangle" and len(s) >= 2:
            fn = draw(st.sampled_from(["triu", "tril"]))
            k = draw(st.integers(-2, 2))
            add(f"np.{fn}({x}, {k})", lambda e, x=x, f=fn, k=k: getattr(np, f)(e[x], k), s)
        elif kind == "sort":
            axis = draw(st.integers(0, last))
            add(f"np.sort({x}, axis={axis}) + np.argsort({x}, axis={axis}, stable=True)",
                lambda e, x=x, a=axis: np.sort(e[x], axis=a) + np.argsort(e[x], axis=a,
                                                                          stable=True), s)
        elif kind == "norm":
            axis = draw(st.sampled_from([None, last, (0, last)]))
            if axis is None:  # keepdims: the value stays an array for later steps
                add(f"np.linalg.norm({x}, keepdims=True)",
                    lambda e, x=x: np.linalg.norm(e[x], keepdims=True), (1,) * len(s))
            elif len(s) > 2 or (isinstance(axis, int) and len(s) > 1):
                reduced = (axis,) if isinstance(axis, int) else axis
                add(f"np.linalg.norm({x}, axis={axis})",
                    lambda e, x=x, a=axis: np.linalg.norm(e[x], axis=a),
                    tuple(d for k, d in enumerate(s) if k not in reduced))
        elif kind == "cumprod":
            axis = draw(st.integers(0, last))
            add(f"np.cumprod({x} * 0.1 + 1, axis={axis})",
                lambda e, x=x, a=axis: np.cumprod(e[x] * 0.1 + 1, axis=a), s)
        elif kind == "prod":
            axis = draw(st.integers(0, last))
            out = tuple(d for k, d in enumerate(s) if k != axis)
            if out:  # exact zeros (the first row), which the derivatives must not divide by;
                # in float64 (ldexp of an int8 is float16, where a product of a few of them
                # overflows: 0 * inf is NaN on a device whose rows hold no zero, in any order
                # but numpy's, a difference of float16, not of the plan)
                add(f"np.prod(np.ldexp(({x} - {x}[:1]).astype(np.float64), -1), axis={axis})",
                    lambda e, x=x, a=axis: np.prod(np.ldexp(
                        (e[x] - e[x][:1]).astype(np.float64), -1), axis=a), out)
        elif kind == "complex_parts":
            add(f"np.real({x} * (1 + 2j)) - ({x} * 1j).imag",
                lambda e, x=x: np.real(e[x] * (1 + 2j)) - (e[x] * 1j).imag, s)
        elif kind == "mT" and len(s) >= 2:
            add(f"{x}.mT", lambda e, x=x: e[x].mT, s[:-2] + (s[-1], s[-2]))
        elif kind == "einsum3" and len(s) == 2:
            w = new_input((s[1], draw(st.sampled_from(DIM_SIZES))))
            v = new_input((shapes[w][1],))
            add(f"np.einsum('ab,bc,c->a', {x}, {w}, {v})",
                lambda e, x=x, w=w, v=v: np.einsum("ab,bc,c->a", e[x], e[w], e[v]), s[:1])
        elif kind == "more_ufuncs":
            add(f"np.logaddexp({x}, 1) + np.log1p(np.square({x})) + np.expm1({x} * 0.1) "
                f"+ np.reciprocal({x} * {x} + 1)",
                lambda e, x=x: np.logaddexp(e[x], 1) + np.log1p(np.square(e[x]))
                + np.expm1(e[x] * 0.1) + np.reciprocal(e[x] * e[x] + 1), s)
        elif kind == "bfloat16":  # elementwise in bf16, exact whatever the layout
            add(f"np.tanh({x}.astype(bf16)).astype(np.float32)",
                lambda e, x=x: np.tanh(e[x].astype(ml_dtypes.bfloat16)).astype(np.float32), s)
        elif kind == "int8_compare":  # Python ints beyond int8: numpy answers exactly
            add(f"(({x} * 40).astype(np.int8) < 1000) * ({x} > -1000) * {x}",
                lambda e, x=x: ((e[x] * 40).astype(np.int8) < 1000) * (e[x] > -1000) * e[x], s)
        elif kind == "astype":
            add(f"{x}.astype(np.float32) * 3", lambda e, x=x: e[x].astype(np.float32) * 3, s)
        elif kind == "swapaxes" and len(s) >= 2:
            a, b = draw(st.permutations(range(len(s))))[:2]
            add(f"np.swapaxes({x}, {a}, {b})", lambda e, x=x, a=a, b=b: np.swapaxes(e[x], a, b),
                tuple(s[b] if k == a else s[a] if k == b else d for k, d in enumerate(s)))
        elif kind in ("bool_matmul", "int8_sum"):
            # on an input, whose exact values decide the signs and the integer parts
            x = draw(st.sampled_from([n for n, _ in prog.inputs]))
            s = shapes[x]
            axis = draw(st.integers(0, len(s) - 1))
            # (a pending bool sum, an `or`, that is then counted: one dim fewer, so from rank 2)
            if kind == "bool_matmul" and len(s) > 1:
                w = new_input((s[-1], draw(st.sampled_from(DIM_SIZES))))
                add(f"(({x} > 0) @ ({w} > 0)).sum(axis=-1) * 0.5",
                    lambda e, x=x, w=w: ((e[x] > 0) @ (e[w] > 0)).sum(axis=-1) * 0.5, s[:-1])
            elif len(s) > 1:  # a sum that wraps in int8
                add(f"np.clip({x} * 40, -100, 100).astype(np.int8).sum(axis={axis}, "
                    "dtype=np.int8)",
                    lambda e, x=x, a=axis: np.clip(e[x] * 40, -100, 100).astype(np.int8).sum(
                        axis=a, dtype=np.int8),
                    tuple(d for k, d in enumerate(s) if k != axis))
    if not prog.steps:
        add("np.tanh(a0)", lambda e: np.tanh(e["a0"]), shape0)
    results = [st_.name for st_ in prog.steps]
    chosen = draw(st.lists(st.sampled_from(results), min_size=1, max_size=2, unique=True))
    prog.outputs = sorted(chosen, key=results.index)
    if results[-1] not in prog.outputs:
        prog.outputs.append(results[-1])
    return prog


def shardings_for(draw, shape: Shape, mesh_names: list[str]) -> list[tuple[str, ...]]:
    """A random valid assignment of mesh dims to the dims of `shape` (each mesh dim at most
    once; the shards need not divide the dim)."""
    dims: list[tuple[str, ...]] = [() for _ in shape]
    for name in mesh_names:
        choice = draw(st.integers(-1, len(shape) - 1))
        if choice < 0:
            continue
        dims[choice] = dims[choice] + (name,)
    return dims
