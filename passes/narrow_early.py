"""narrow-early: take local slices as early as the program allows.

Expects: a global-shape module whose layouts are final and whose layout changes are explicit
collectives (after insert-collectives).

Guarantees: where every use of a value is one and the same ``local_slice`` (same mesh dims,
same axis) and the value is not returned,

- a value made by an elementwise op is made from sliced operands instead: each operand that
  spans the sliced dim (is not broadcast along it) is sliced the same way (once per op), the
  others are taken as they are, and the op's result has the slice's layout; the new slices
  are then narrowed in turn;
- a value made by an ``all_reduce`` over exactly the slice's mesh dims becomes a
  ``reduce_scatter`` over them onto the slice's axis, which sends half the bytes.

So an all_reduce whose result is only used through elementwise ops and then sliced (the
gradient going into a ZeRO-sharded optimizer update) is a reduce_scatter followed by the
elementwise ops on every device's block. The new ops keep the location and reason of the
ops they replace. Values, layouts and every other op are unchanged.

```
%r = all_reduce %g {mesh_dims = [dp], op = sum} : f32[8,4] @ {-, tp}
%m = multiply %r, %c : f32[8,4] @ {-, tp}
%s = local_slice %m {mesh_dims = [dp], axis = 0} : f32[8,4] @ {dp, tp}
// after
%r = reduce_scatter %g {mesh_dims = [dp], op = sum, axis = 0} : f32[8,4] @ {dp, tp}
%s = multiply %r, %c : f32[8,4] @ {dp, tp}
```
"""

from __future__ import annotations

from dataclasses import dataclass

from dtensor_compiler.errors import ShapeError
from dtensor_compiler.ir import opdef
from dtensor_compiler.ir.attrs import int_attr
from dtensor_compiler.ir.builder import make_op
from dtensor_compiler.ir.core import Function, Module, Operation, Value
from dtensor_compiler.ir.opdef import InferContext
from dtensor_compiler.ir.sharding import Sharding
from dtensor_compiler.pass_manager import ModulePass, PassContext, register_pass


@register_pass
@dataclass(frozen=True)
class NarrowEarlyPass(ModulePass):
    """Move local slices ahead of elementwise ops; turn a sliced all_reduce into a
    reduce_scatter."""

    name = "narrow-early"

    def apply(self, module: Module, ctx: PassContext) -> bool:
        infer = InferContext(module.mesh)
        changed = False
        for func in module.functions:
            changed |= _narrow_function(func, infer)
        return changed


def _narrow_function(func: Function, infer: InferContext) -> bool:
    """Narrow one function to a fixed point; whether anything changed."""
    changed = False
    removed: set[Operation] = set()  # the ops themselves: an id outlives a freed op
    pending = [op for op in func.ops if op.name == "local_slice"]
    while pending:
        op = pending.pop()
        if op in removed:
            continue
        rewrite = _narrowed(func, op, infer)
        if rewrite is None:
            continue
        replaced, new_ops = rewrite
        _splice(func, replaced, new_ops)
        removed.update(replaced)
        pending += [o for o in new_ops if o.name == "local_slice"]
        changed = True
    return changed


def _slice_key(op: Operation) -> tuple[object, object]:
    return op.attrs["mesh_dims"], op.attrs["axis"]


def _narrowed(func: Function, cut: Operation, infer: InferContext
              ) -> tuple[list[Operation], list[Operation]] | None:
    """The ops to remove and the ops replacing them, if the slice `cut` can move up (the ops
    it made on the way are detached again when it cannot: they are in no use list)."""
    made: list[Operation] = []
    rewrite = _try_narrowing(func, cut, infer, made)
    if rewrite is None:
        for op in made:
            op.drop_operands()
    return rewrite


def _try_narrowing(func: Function, cut: Operation, infer: InferContext,
                   made: list[Operation]) -> tuple[list[Operation], list[Operation]] | None:
    """`_narrowed`, each op it makes also appended to `made`."""
    value = cut.operands[0]
    producer = value.owner
    users = value.users
    if producer is None or func.is_result(value) or value.type.sharding is None \
            or value.type.sharding.partial or cut.result is None:
        return None
    if any(u.name != "local_slice" or _slice_key(u) != _slice_key(cut) for u in users):
        return None
    target = cut.type
    if producer.name == "all_reduce":
        new = _as_reduce_scatter(producer, cut, infer, made)
        return None if new is None else ([producer, *users], [new])
    definition = opdef.lookup(producer.name)
    if not definition.traits.elementwise or not definition.pure or producer.result is None:
        return None
    axis = int_attr(cut.attrs, "axis")
    mesh_dims = cut.attrs["mesh_dims"]
    new_ops: list[Operation] = []
    operands: list[Value] = []
    pieces: dict[int, Value] = {}  # one slice per operand value (``g * g``)
    for operand in producer.operands:
        if id(operand) in pieces:
            operands.append(pieces[id(operand)])
            continue
        lead = value.type.rank - operand.type.rank
        at = axis - lead
        if at < 0 or operand.type.shape[at] != value.type.shape[axis]:
            operands.append(operand)  # broadcast along the sliced dim: taken whole
            continue
        layout = operand.type.sharding
        if layout is None or layout.partial or layout.dims[at] != value.type.sharding.dims[axis]:
            return None
        dims = list(layout.dims)
        dims[at] = target.sharding.dims[axis] if target.sharding is not None else dims[at]
        piece = make_op("local_slice", [operand], {"mesh_dims": mesh_dims, "axis": at}, infer,
                        sharding=Sharding(tuple(dims)), loc=cut.loc, why=cut.why)
        made.append(piece)
        new_ops.append(piece)
        assert piece.result is not None
        pieces[id(operand)] = piece.result
        operands.append(piece.result)
    try:
        narrowed = make_op(producer.name, operands, dict(producer.attrs), infer,
                           declared=target, sharding=target.sharding, loc=producer.loc,
                           why=producer.why)
    except ShapeError:
        return None
    made.append(narrowed)
    if narrowed.type != target:
        return None
    return [producer, *users], [*new_ops, narrowed]


def _as_reduce_scatter(reduce: Operation, cut: Operation, infer: InferContext,
                       made: list[Operation]) -> Operation | None:
    """``reduce_scatter`` doing `reduce` (an all_reduce) and then `cut`, if one does (appended
    to `made` once made)."""
    if set(reduce.attrs["mesh_dims"]) != set(cut.attrs["mesh_dims"]):  # type: ignore[arg-type]
        return None
    attrs = {"mesh_dims": cut.attrs["mesh_dims"], "op": reduce.attrs["op"],
             "axis": cut.attrs["axis"]}
    try:
        scatter = make_op("reduce_scatter", [reduce.operands[0]], attrs, infer,
                          sharding=cut.type.sharding, loc=reduce.loc, why=reduce.why)
    except ShapeError:
        return None
    made.append(scatter)
    collective = opdef.lookup("reduce_scatter").collective
    source = reduce.operands[0].type.sharding
    assert collective is not None and source is not None
    try:
        result = collective.transfer(scatter.attrs, source, infer.mesh)
    except ValueError:
        return None
    return scatter if result == cut.type.sharding and scatter.type == cut.type else None


def _splice(func: Function, removed: list[Operation], added: list[Operation]) -> None:
    """Replace `removed` (a producer and the slices of its result) by `added`, whose last op
    gives the sliced value, placed where the producer was."""
    last = added[-1].result
    assert last is not None
    for op in removed[1:]:
        assert op.result is not None
        func.replace_value(op.result, last)
    gone = {id(op) for op in removed}
    ops: list[Operation] = []
    for op in func.ops:
        if op is removed[0]:
            ops += added
        if id(op) not in gone:
            ops.append(op)
    for op in removed:
        op.drop_operands()
    func.ops = ops
