"""fuse: group chains of elementwise ops into ``kernel`` ops, each running a body function.

Expects: a localized module (after localize).

Guarantees: in every function (but the kernel bodies of an earlier run), every maximal
group of fusable ops in which every op but the last (the group's *root*) has all its
consumers inside the group and is not returned, is replaced by one ``kernel`` op at the
root's place (each value of the group is computed once, however many of its ops use it);
the group's ops move, in program order, into a new function of the module (its *body*,
named after the function, a number no other function of the module has, and the ops it
fuses), whose arguments are the group's inputs in order of first use and whose result is
the root's. Fusable:
elementwise ops (ufuncs, ``where``, ``astype``, ...) and ``broadcast_to``; ``mask`` is not
(it reads which elements of its block are padding). A sum, max or min over the last dim of
its operand alone is a *row reduction*: it may be a group's root, its producers then the
group's prologue (a row kernel), and one that keeps its dims also joins its consumers' group
when the whole group still lies on one row space (`row_space`: every value and every row
reduction's operand broadcast to one shape whose last dim each row reduction reduces in
full, and the root is that shape or one element of it per row), so softmax, layernorm,
RMSnorm, ``argmax`` and ``mean`` with kept dims are each one kernel. A contraction (``matmul``
or a two-operand ``einsum`` of floats) joins its consumers' group when that group has no
reduction or contraction and every value in it broadcasts to the contraction's result:
its epilogue (``gelu(x @ w + b)`` is one kernel); what feeds a contraction never joins it.
The rules live in `ir.fusion`, which code generators read too. A ``full`` an op of the group
takes is copied into the body rather than passed in, and dropped where it was once nothing
there uses it.
Collectives and every other op are boundaries. Groups of fewer than `min_ops` ops, and
groups that take nothing but ``full`` values, are left as they are. Values, types and
every other op are unchanged; a module of one function names it its entry.

```
%2 = subtract %0, %1 : f32[4,8] @ {x, -}
%3 = exp %2 : f32[4,8] @ {x, -}
// after
%3 = kernel %0, %1 {body = f_k0_subtract_exp} : f32[4,8] @ {x, -}
```
"""

from __future__ import annotations

from dataclasses import dataclass

from dtensor_compiler.ir.core import Function, Level, Module, Operation, Value
from dtensor_compiler.ir.fusion import contraction, fusable, may_join, row_reduction
from dtensor_compiler.ir.ops.kernel import KERNEL
from dtensor_compiler.ir.ops.sources import FULL
from dtensor_compiler.pass_manager import ModulePass, PassContext, register_pass


@register_pass
@dataclass(frozen=True)
class FusePass(ModulePass):
    """Group chains of elementwise ops into kernels."""

    name = "fuse"
    requires = frozenset({Level.LOCAL})
    min_ops: int = 2

    def apply(self, module: Module, ctx: PassContext) -> bool:
        if module.entry is None and len(module.functions) == 1:
            module.entry = module.functions[0].name
        bodies = {str(op.attrs["body"]) for f in module.functions for op in f.ops
                  if op.name == KERNEL.name}
        changed = False
        for func in [f for f in module.functions if f.name not in bodies]:
            groups = [g for g in _groups(func) if len(g) >= self.min_ops and _takes_input(g)]
            copied: set[int] = set()
            taken = {f.name for f in module.functions}
            for group in groups:
                body = _outline(func, group, taken, copied)
                taken.add(body.name)
                module.functions.append(body)
            func.ops = [op for op in func.ops if id(op) not in copied or op.results[0].uses
                        or func.is_result(op.results[0])]
            changed |= bool(groups)
        return changed


def _groups(func: Function) -> list[list[Operation]]:
    """The groups of `func`'s fusable ops, each in program order."""
    returned = {id(v) for v in func.results}
    group_of: dict[int, list[Operation]] = {}
    groups: list[list[Operation]] = []
    for op in reversed(func.ops):
        if not (fusable(op) or row_reduction(op) or contraction(op) is not None):
            continue
        result = op.result
        assert result is not None
        users = result.users
        group = None
        if id(result) not in returned and users:
            theirs = {id(group_of.get(id(u))) for u in users}
            if len(theirs) == 1:  # every consumer is in that one group
                joined = group_of.get(id(users[0]))
                if joined is not None and may_join(op, joined):
                    group = joined
        if group is None:
            group = []
            groups.append(group)
        group.append(op)
        group_of[id(op)] = group
    for group in groups:
        group.reverse()
    groups.reverse()
    return groups


def _takes_input(group: list[Operation]) -> bool:
    """Whether `group` takes some value other than a ``full`` (a group of constants alone
    is left to constant folding)."""
    members = {id(op) for op in group}
    return any(v.owner is None or (id(v.owner) not in members and v.owner.name != FULL.name)
               for op in group for v in op.operands)


def _outline(func: Function, group: list[Operation], taken: set[str], copied: set[int]
             ) -> Function:
    """Move `group` into a body function and put a kernel running it in its root's place;
    add to `copied` the ``full`` ops copied into the body."""
    members = {id(op) for op in group}
    root = group[-1]
    inputs: list[Value] = []
    args: dict[int, Value] = {}
    copies: list[Operation] = []
    for op in group:
        for i, value in enumerate(op.operands):
            owner = value.owner
            if owner is not None and id(owner) in members:
                continue
            if id(value) not in args:
                if owner is not None and owner.name == FULL.name:
                    copy = Operation(FULL.name, [], [value.type], owner.attrs, owner.loc)
                    copies.append(copy)
                    copied.add(id(owner))
                    args[id(value)] = copy.results[0]
                else:
                    args[id(value)] = Value(value.type, name_hint=f"a{len(inputs)}")
                    inputs.append(value)
            op.set_operand(i, args[id(value)])
    assert root.result is not None
    names = list(dict.fromkeys(op.name for op in group))
    n = 0
    while any(t.startswith(f"{func.name}_k{n}_") for t in taken):
        n += 1  # the first number no function of the module uses yet
    body_name = f"{func.name}_k{n}_{'_'.join(names[:4])}"
    kernel = Operation(KERNEL.name, inputs, [root.result.type], {"body": body_name}, root.loc)
    position = func.ops.index(root)
    func.ops[position] = kernel
    func.ops = [op for op in func.ops if id(op) not in members or op is kernel]
    func.replace_value(root.result, kernel.results[0])
    return Function(body_name, [args[id(v)] for v in inputs], copies + group, [root.result])

