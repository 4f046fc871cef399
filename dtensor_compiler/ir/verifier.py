"""The IR verifier: the invariants every pass expects on entry and must keep on exit.

The module's entry, when it names one, is one of its functions. Per function, in one walk
over its ops and their use-lists (linear in ops plus uses, so it can
run after every pass on 20k-op modules):

- every op name is registered, with its definition's operand count, result count and
  attributes, each holding its kind's type, and the op is legal at the module's level;
- SSA: every operand is an argument or the result of an earlier op of the same function, every
  value is defined once, and every returned value is defined in the function;
- use-lists match operands: each operand slot is listed once in its value's `uses`, and every
  entry names an op of the function that uses the value there (an op removed from the
  function has let go of its operands: planning reads `uses` to find a value's consumers);
- the (dtype, shape) the definition infers from the operand types equals each result's type;
- every layout has the tensor's rank and names each mesh dim of the module's mesh at most once;
- padding (see `TensorType`): a global type records no extents; a localized type records the
  global extent of exactly the dims with padding, each with the block room `geometry` gives;
  a type says what its padding holds only if it has some, and only the op whose definition
  fills it (``mask``) says so; in localized IR, every padding an op reads as data
  (`padding.padding_reads`) holds the identity it reads it as;
- a collective's result layout is what its definition's `transfer` makes of its operand's
  layout, the blocks of every dim it changes line up (`geometry.aligned`), and in localized IR
  it keeps the global shape.

A failure raises `VerificationError` naming the problem, the pass it ran after, and the printed
function around the faulty line, which is marked with ``>``.
"""

from __future__ import annotations

from dtensor_compiler.errors import VerificationError
from dtensor_compiler.ir import geometry, opdef
from dtensor_compiler.ir.core import Function, Level, Module, Operation, Value
from dtensor_compiler.ir.opdef import InferContext, OpDef
from dtensor_compiler.ir.ops import padding
from dtensor_compiler.ir.printer import Namer, print_function
from dtensor_compiler.ir.sharding import MeshShape, ReduceOp
from dtensor_compiler.ir.types import TensorType

CONTEXT_LINES = 3
"""Printed lines shown before and after the faulty one."""

_INFER_ERRORS = (ValueError, TypeError, KeyError, IndexError)
"""What an inference function raises on operands or attributes of the wrong kind or range."""


def verify_module(module: Module, after: str | None = None) -> None:
    """Raise `VerificationError` at the first broken invariant; `after` names the last pass."""
    ctx = InferContext(module.mesh, module.level)
    where = f" after pass {after!r}" if after else ""
    if module.entry is not None and module.entry not in {f.name for f in module.functions}:
        raise VerificationError(f"IR verification failed{where}: the entry @{module.entry} "
                                "is not a function of the module")
    for func in module.functions:
        try:
            _FunctionVerifier(func, module, ctx).run()
        except _Broken as broken:
            source = broken.op.source if broken.op is not None else None
            raise VerificationError(_report(func, broken, after), source) from None


def _calls(op: Operation) -> bool:
    """Whether `op` runs another function (an unknown op does not: its own check says so)."""
    try:
        return opdef.lookup(op.name).calls is not None
    except KeyError:
        return False


class _Broken(Exception):
    """A broken invariant at one printed line of the function (0 is its header)."""

    def __init__(self, message: str, line: int, op: Operation | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.op = op


class _FunctionVerifier:
    def __init__(self, func: Function, module: Module, ctx: InferContext) -> None:
        self.func = func
        self.module = module
        self.ctx = ctx
        self.defined: set[int] = set()
        self.layout_problems: dict[TensorType, list[str]] = {}
        self._namer: Namer | None = None

    def name(self, value: Value) -> str:
        """The printed name of `value`; only needed for messages, so built on first use."""
        if self._namer is None:
            self._namer = Namer(self.func)
        return self._namer(value)

    def run(self) -> None:
        for arg in self.func.args:
            self.define(arg, 0)
        for line, op in enumerate(self.func.ops, start=1):
            self.check_op(op, line)
            for result in op.results:
                self.define(result, line, op)
        self.check_use_lists()
        return_line = len(self.func.ops) + 1
        for i, value in enumerate(self.func.results):
            if id(value) not in self.defined:
                raise _Broken(f"returned value {i} ({self.name(value)}) is not defined in "
                              f"@{self.func.name}", return_line)

    def define(self, value: Value, line: int, op: Operation | None = None) -> None:
        if id(value) in self.defined:
            raise _Broken(f"{self.name(value)} is defined twice", line, op)
        self.defined.add(id(value))
        self.check_layout(value, line, op)

    def check_op(self, op: Operation, line: int) -> None:
        definition = opdef.find(op.name)
        if definition is None:
            raise _Broken(f"unknown op {op.name!r}", line, op)
        if self.module.level not in definition.levels:
            raise _Broken(f"{op.name} is not allowed in a {self.module.level.value} module",
                          line, op)
        operands = op.operands
        if definition.operands is not None and len(operands) != definition.operands:
            raise _Broken(f"{op.name} takes {definition.operands} operands, has "
                          f"{len(operands)}", line, op)
        if definition.operands is None and not operands:
            raise _Broken(f"{op.name} takes at least one operand", line, op)
        if len(op.results) != definition.results:
            raise _Broken(f"{op.name} has {definition.results} result(s), not "
                          f"{len(op.results)}", line, op)
        problems = definition.attr_problems(op.attrs)
        if problems:
            raise _Broken(problems[0], line, op)
        for i, value in enumerate(operands):
            if id(value) not in self.defined:
                raise _Broken(f"operand {i} ({self.name(value)}) is not defined before its use",
                              line, op)
        declared = [r.type for r in op.results]
        try:
            inferred = definition.infer([v.type for v in operands], op.attrs, declared,
                                        self.ctx)
        except _INFER_ERRORS as e:
            raise _Broken(f"{op.name}: {e}", line, op) from None
        for (dtype, shape), t in zip(inferred, declared):
            if (dtype, tuple(shape)) != (t.dtype, t.shape):
                raise _Broken(f"{op.name} gives {dtype}[{','.join(map(str, shape))}] but its "
                              f"result type is {t.text()}", line, op)
        pad = definition.fills(op) if definition.fills is not None else None
        for t in declared:
            if t.pad is not None and t.pad != pad:
                raise _Broken(f"{op.name} leaves garbage in padding, but its result type says "
                              f"it holds the identity of {t.pad}" if pad is None else
                              f"{op.name} fills padding with the identity of {pad}, but its "
                              f"result type says {t.pad}", line, op)
        if definition.collective is not None:
            self.check_collective(op, definition, line)
        if definition.calls is not None:
            self.check_call(op, str(op.attrs[definition.calls]), line)
        if self.module.level is Level.LOCAL and any(v.type.padded for v in operands):
            self.check_padding_reads(op, line)

    def check_call(self, op: Operation, name: str, line: int) -> None:
        body = self.module.function(name)
        if body is None:
            raise _Broken(f"{op.name} runs @{name}, which is not a function of the module",
                          line, op)
        if body is self.func or name == self.module.entry:
            raise _Broken(f"{op.name} runs @{name}, the function it is in or the entry",
                          line, op)
        nested = next((o for o in body.ops if _calls(o)), None)
        if nested is not None:
            raise _Broken(f"{op.name} runs @{name}, which runs another function itself "
                          f"({nested.name}): a body runs no function", line, op)
        if len(body.args) != len(op.operands) or len(body.results) != len(op.results):
            raise _Broken(f"{op.name} passes {len(op.operands)} operands for the "
                          f"{len(body.args)} arguments of @{name} and has {len(op.results)} "
                          f"result(s) for its {len(body.results)}", line, op)
        pairs = [("operand", i, v.type, a.type) for i, (v, a) in
                 enumerate(zip(op.operands, body.args))]
        pairs += [("result", i, r.type, b.type) for i, (r, b) in
                  enumerate(zip(op.results, body.results))]
        for what, i, here, there in pairs:
            if here != there:
                raise _Broken(f"{op.name} {what} {i} is {here.text()}, but @{name} has "
                              f"{there.text()} there", line, op)

    def check_padding_reads(self, op: Operation, line: int) -> None:
        try:
            reads = padding.padding_reads(op)
        except _INFER_ERRORS as e:
            raise _Broken(f"{op.name}: {e}", line, op) from None
        for read in reads:
            t = op.operands[read.operand].type
            dims = padding.unmasked_dims(op, read, self.ctx)
            if dims:
                holds = "garbage" if t.pad is None else f"the identity of {t.pad}"
                raise _Broken(f"{op.name} reads the padding of operand {read.operand} "
                              f"({self.name(op.operands[read.operand])}) along dim {dims[0]} "
                              f"as the identity of {read.fill}, but it holds {holds}; run "
                              "mask-padding before localize", line, op)

    def check_collective(self, op: Operation, definition: OpDef, line: int) -> None:
        assert definition.collective is not None
        src = op.operands[0].type.sharding
        dst = op.type.sharding
        if src is None or dst is None:
            raise _Broken(f"{op.name} needs a layout on its operand and on its result", line, op)
        try:
            expected = definition.collective.transfer(op.attrs, src, self.module.mesh)
        except _INFER_ERRORS as e:
            raise _Broken(f"{op.name}: {e}", line, op) from None
        if expected != dst:
            raise _Broken(f"{op.name} turns {src.text()} into {expected.text()}, but its result "
                          f"layout is {dst.text()}", line, op)
        mesh = self.module.mesh
        operand, result = op.operands[0].type, op.type
        shape = operand.shape
        if self.module.level is Level.LOCAL:
            shape = operand.global_shape(mesh)
            if result.global_shape(mesh) != shape:
                raise _Broken(f"{op.name} of a {list(shape)} value gives a "
                              f"{list(result.global_shape(mesh))} one", line, op)
        if not geometry.changes_align(shape, src.dims, dst.dims, mesh):
            raise _Broken(f"{op.name}: the blocks of {src.text()} and {dst.text()} do not line "
                          f"up for shape {list(shape)} on {mesh.text()}", line, op)

    def check_layout(self, value: Value, line: int, op: Operation | None) -> None:
        t = value.type
        if t.sharding is None and t.extents is None and t.pad is None:
            return
        problems = self.layout_problems.get(t)
        if problems is None:
            problems = self.layout_problems[t] = self.find_layout_problems(t)
        if problems:
            raise _Broken(f"layout of {self.name(value)}: {'; '.join(problems)}", line, op)

    def find_layout_problems(self, t: TensorType) -> list[str]:
        sharding, mesh = t.sharding, self.module.mesh
        if sharding is None:
            return ["a type without a layout has no padding"]
        problems = sharding.problems(mesh, t.shape)
        if problems:
            return problems
        if self.module.level is Level.GLOBAL:
            if t.extents is not None:
                return ["a global type records no local/global extents"]
            padded = bool(geometry.uneven_dims(t.shape, sharding.dims, mesh))
        else:
            problems = _extent_problems(t, mesh)
            padded = t.extents is not None
        if t.pad is not None and not padded:
            problems.append(f"pad({t.pad}) on a type without padding")
        if t.pad in (ReduceOp.MAX, ReduceOp.MIN) and t.dtype.startswith("c"):
            problems.append(f"pad({t.pad}) on {t.dtype}: complex numbers have no order")
        return problems


    def check_use_lists(self) -> None:
        line_of = {id(op): line for line, op in enumerate(self.func.ops, start=1)}
        operands_of = {id(op): op.operands for op in self.func.ops}
        listed: set[tuple[int, int]] = set()
        for value in self.func.values():
            for user, index in value.uses:
                line = line_of.get(id(user))
                if line is None:
                    owner = value.owner
                    raise _Broken(f"use-list of {self.name(value)} names {user.name} (operand "
                                  f"{index}), an op that is not in this function (a pass "
                                  "removed it without `drop_operands`)",
                                  0 if owner is None else line_of.get(id(owner), 0), owner)
                operands = operands_of[id(user)]
                if not (0 <= index < len(operands) and operands[index] is value):
                    raise _Broken(f"use-list of {self.name(value)} names operand {index} of "
                                  f"this op, which is not {self.name(value)}", line, user)
                if (id(user), index) in listed:
                    raise _Broken(f"use-list of {self.name(value)} names operand {index} of "
                                  "this op twice", line, user)
                listed.add((id(user), index))
        for op in self.func.ops:
            for index, value in enumerate(operands_of[id(op)]):
                if (id(op), index) not in listed:
                    raise _Broken(f"operand {index} is missing from the use-list of "
                                  f"{self.name(value)}", line_of[id(op)], op)


def _report(func: Function, broken: _Broken, after: str | None) -> str:
    where = f" after pass {after!r}" if after else ""
    at = f" (at {broken.op.loc})" if broken.op is not None and broken.op.loc else ""
    lines = print_function(func).split("\n")
    first = max(broken.line - CONTEXT_LINES, 0)
    last = min(broken.line + CONTEXT_LINES, len(lines) - 1)
    excerpt = [("> " if i == broken.line else "  ") + lines[i] for i in range(first, last + 1)]
    return (f"IR verification failed{where} in @{func.name}: {broken.message}{at}\n"
            + "\n".join(excerpt))


def _extent_problems(t: TensorType, mesh: MeshShape) -> list[str]:
    """What is wrong with the recorded global extents of a localized type."""
    assert t.sharding is not None
    if t.extents is None:
        return []
    if len(t.extents) != t.rank or all(e is None for e in t.extents):
        return [f"extents {list(t.extents)} do not fit a rank-{t.rank} type with padding"]
    out = []
    for i, (n, e) in enumerate(zip(t.shape, t.extents)):
        if e is None:
            continue
        k = t.sharding.num_shards(i, mesh)
        if geometry.splits(e, k):
            out.append(f"dim {i} of global extent {e} over {k} shards has no padding; write "
                       f"it as {e // k}")
        elif geometry.block_size(e, k) != n:
            out.append(f"dim {i} of global extent {e} over {k} shards has blocks of "
                       f"{geometry.block_size(e, k)}, not {n}")
    return out
