"""Reverse-mode differentiation of traced code, on the global IR before layouts are chosen.

``dtc.grad(f)(x)`` inside a traced function traces `f` into the same function, then walks the
ops it emitted backwards, asking each op's definition for its VJP rule (`OpDef.vjp`, see
`ir.vjp`) and emitting the cotangent ops after the forward ones, at the forward op's line.
Every derivative of a value is marked with a ``cotangent`` hint naming that value, so that
layout propagation lays it out alike unless something else decides first.
A negation a rule returns is not emitted but carried with the cotangent (rules are linear in
it), so ``a + -b`` accumulates as ``a - b`` and a broadcast cotangent is added without its
``broadcast_to``: a layernorm or softmax backward holds no ``negative`` op.
Only ops whose result depends on a differentiated argument (and is floating point) are
differentiated; an argument nothing depends on gets zeros. Complex values that depend on one
are followed too, so that a derivative needing one is refused where it would flow through it.
Propagation, the relayout planner and the explain table then see the forward and the
backward program as one.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence

import numpy as np

from dtensor_compiler.errors import GradientError
from dtensor_compiler.ir import opdef
from dtensor_compiler.ir.core import Operation, Value
from dtensor_compiler.ir.equivalence import cse_key
from dtensor_compiler.ir.types import TensorType
from dtensor_compiler.ir.vjp import VJPContext, differentiable, unread_operand
from dtensor_compiler.tracing.location import user_location
from dtensor_compiler.tracing.outputs import OutputTree, flatten_with_paths, unflatten_each
from dtensor_compiler.tracing.recorder import Recorder
from dtensor_compiler.tracing.tracer import TracedArray, unwrap


def value_and_grad_traced(fn: Callable[..., object], argnums: tuple[int, ...], has_aux: bool,
                          args: Sequence[object], rec: Recorder,
                          kwargs: Mapping[str, object] | None = None
                          ) -> tuple[object, object, list[object]]:
    """Trace `fn(*args, **kwargs)` into `rec`'s function and differentiate its (first)
    output with respect to the arguments at `argnums`: (output, aux or None, one gradient
    per argnum; a position given twice gets the same one twice). An argument may be an
    array or a nesting of tuples, lists and dicts of arrays (a dict of parameters); its
    gradient has the same structure. Keyword arguments are passed on, not differentiated."""
    kwargs = kwargs or {}
    call = list(args)
    wrt: list[Value] = []
    trees: list[OutputTree] = []
    unique = tuple(dict.fromkeys(argnums))  # (argnums=(0, 0): one derivative, given twice)
    for i in unique:
        try:
            leaves, paths, tree = flatten_with_paths(call[i])
        except TypeError as e:
            raise GradientError(f"grad cannot take argument {i}: {e}", user_location()) from None
        aliases = []
        for leaf, path in zip(leaves, paths):
            value = _value(leaf, rec, f"argument {i}{path}")
            if not differentiable(value.type):
                raise GradientError(f"grad requires floating-point inputs; argument {i}{path} "
                                    f"is {value.type.dtype}{list(value.type.shape)}",
                                    user_location())
            # the argument as a value of its own (a reshape to its own shape, which simplify
            # removes), so that `fn`'s other uses of the same array (a closure, another
            # argument) are constants, as JAX has it: the derivative is a partial one
            alias = rec.builder.create("reshape", [value], declared=value.type,
                                       loc=user_location())
            wrt.append(alias)
            aliases.append(TracedArray(alias, rec))
        trees.append(tree)
        call[i] = tree.unflatten(aliases)
    start = len(rec.func.ops)
    returned = fn(*call, **kwargs)
    if has_aux:
        if not isinstance(returned, (tuple, list)) or len(returned) != 2:
            raise GradientError("with has_aux=True the function must return a pair (output, "
                                "aux)", user_location())
        out, aux = returned
    else:
        out, aux = returned, None
        if isinstance(out, (tuple, list, dict)):
            raise GradientError(f"grad needs a function with a floating-point scalar output; "
                                f"it returned a {type(out).__name__} (with has_aux=True, a "
                                "pair of the output and anything else)", user_location())
    output = _value(out, rec)
    if output.type.shape != () or not differentiable(output.type):
        raise GradientError(f"grad needs a function with a floating-point scalar output; it "
                            f"returned {output.type.dtype}{list(output.type.shape)}",
                            user_location())
    grads = [TracedArray(g, rec) for g in backward(rec, rec.func.ops[start:], output, wrt)]
    by_position = dict(zip(unique, unflatten_each(trees, grads)))
    return TracedArray(output, rec), aux, [by_position[i] for i in argnums]


def backward(rec: Recorder, ops: Sequence[Operation], output: Value, wrt: Sequence[Value]
             ) -> list[Value]:
    """The derivatives of the scalar `output` with respect to `wrt`, through `ops` (the
    forward program, in order), emitted into `rec`'s function. An op that repeats an earlier
    one of `ops` (`equivalence.cse_key`) is that op: its value's cotangents go to the
    first's, which is differentiated once."""
    same = _repeated_values(ops)
    active = {id(v) for v in wrt}
    for op in ops:
        if any(id(same.get(id(v), v)) in active for v in op.operands):
            # complex results are followed too, to refuse the derivatives that need them
            active.update(id(r) for r in op.results
                          if differentiable(r.type) or _is_complex(r.type))
    cotangents: dict[int, _Signed] = {}
    """Per value, its cotangent so far, and whether that is the negation of the value held
    (a rule's ``negative`` is not emitted but carried: rules are linear in the cotangent,
    so a negated one goes through a rule as it is and its results are negated in turn,
    until an accumulation makes the pair a subtraction)."""
    copy: dict[int, Operation] = {}
    """Per value with a cotangent, the op (the value's own, or a repeat of it) through whose
    result the last use in the program reached it: the line its derivative is taken at."""
    if output.owner is not None:
        copy[id(same.get(id(output), output))] = output.owner
    output = same.get(id(output), output)
    if id(output) in active:
        cotangents[id(output)] = (rec.full((), output.type.dtype, 1.0), False)
    for op in reversed(ops):
        if op.result is None or id(op.result) not in cotangents:
            continue
        loc = copy.get(id(op.result), op).loc
        rule = opdef.lookup(op.name).vjp
        if rule is None:
            raise GradientError(f"cannot differentiate through {op.name}: it has no "
                                "derivative rule", loc)
        operands = [same.get(id(v), v) for v in op.operands]
        ad = VJPContext(rec.builder, loc, [id(v) in active for v in operands], rec.constants)
        if any(id(v) in active and _is_complex(v.type) for v in operands):
            raise GradientError(f"cannot differentiate through complex values: {op.name} "
                                "takes one that depends on a differentiated input", loc)
        g, negated = cotangents.pop(id(op.result))
        for given, v, c in zip(op.operands, operands, rule(ad, op, _hinted(ad, g, op.result))):
            if c is None or id(v) not in active:
                continue
            if given.owner is not None:
                copy.setdefault(id(v), given.owner)
            inner = ad.negation_of(c)
            signed = (c, negated) if inner is None else (inner, not negated)
            before = cotangents.get(id(v))
            cotangents[id(v)] = signed if before is None else _accumulate(ad, before, signed)
        ad.finish()
    out = []
    for w in wrt:
        found = cotangents.get(id(w))
        if found is None:
            out.append(rec.full(w.type.shape, w.type.dtype, 0.0))
            continue
        ad = VJPContext(rec.builder, user_location(), constants=rec.constants)
        g, negated = found
        out.append(_hinted(ad, ad.emit("negative", [g]) if negated else g, w))
    return out


def _repeated_values(ops: Sequence[Operation]) -> dict[int, Value]:
    """Per result of a pure op of `ops` that repeats an earlier one (the same op of the same
    values, operands in the same order: `cse_key`), by id: the earlier op's result. Ops
    without operands (constants) are left alone: no derivative flows into them."""
    groups: dict[tuple[str, tuple[int, ...]], Operation | dict[Hashable, Operation]] = {}
    """Ops by name and operands (the values they stand for): the whole key, which costs
    more, is computed only for ops that share these, once each."""
    same: dict[int, Value] = {}

    def key(op: Operation) -> Hashable:
        return cse_key(op, opdef.lookup(op.name), [same.get(id(v), v) for v in op.operands],
                       ordered=True)

    for op in ops:
        if op.result is None or not op.operands or not opdef.lookup(op.name).pure:
            continue
        light = (op.name, tuple(id(same.get(id(v), v)) for v in op.operands))
        group = groups.get(light)
        if group is None:
            groups[light] = op
            continue
        if isinstance(group, Operation):
            group = groups[light] = {key(group): group}
        first = group.setdefault(key(op), op)
        if first is not op:
            assert first.result is not None
            same[id(op.result)] = first.result
    return same


_Signed = tuple[Value, bool]
"""A cotangent: a value, and whether it stands negated."""


def _accumulate(ad: VJPContext, before: _Signed, c: _Signed) -> _Signed:
    """The sum of two cotangents of one value (its shape), with a broadcast that made either
    folded in (``a + broadcast_to(b)`` is ``a + b``: numpy broadcasts) and their signs into
    the op: ``a + -b`` is ``a - b``, ``-a + -b`` is ``-(a + b)``."""
    (a, minus_a), (b, minus_b) = before, c
    if (inner := unread_operand(b, "broadcast_to")) is not None:
        b = inner
    elif (inner := unread_operand(a, "broadcast_to")) is not None:
        a = inner
    if minus_a == minus_b:
        return ad.emit("add", [a, b]), minus_a
    return (ad.emit("subtract", [b, a]) if minus_a else ad.emit("subtract", [a, b])), False


def _is_complex(t: TensorType) -> bool:
    return t.dtype.startswith("c")


def _hinted(ad: VJPContext, g: Value, x: Value) -> Value:
    """`g`, the derivative with respect to `x`, marked as such for layout propagation (the
    ``cotangent`` hint: laid out like `x` unless something decides otherwise first)."""
    return g if x.type.rank == 0 else ad.emit("cotangent", [g, x])


def stop_gradient_traced(x: object, rec: Recorder) -> TracedArray:
    """``dtc.stop_gradient(x)`` in traced code: `x`, through which no derivative flows."""
    return TracedArray(rec.emit("stop_gradient", [_value(x, rec)]), rec)


def _value(x: object, rec: Recorder, what: str = "") -> Value:
    """A traced array's value, or an array-like lifted to a constant."""
    inner = unwrap(x, rec)
    if isinstance(inner, (Value, np.ndarray, np.generic, bool, int, float, complex, list,
                          tuple)):
        return rec.value(inner)
    where = f" ({what})" if what else ""
    raise GradientError(f"grad works on arrays, got a {type(x).__name__}{where}",
                        user_location())
