"""The execution seam: kernels, the context they run in, and the one loop that runs a program.

A backend provides one *kernel* per op definition (`KernelTable`). A kernel is built once per op
of a program: ``kernel(op, ctx)`` reads the op's attributes and types and returns the function
that maps operand arrays to the result array (a tuple of arrays for an op with several
results). The `ExecContext` is all a kernel may know of where it runs: how many leading mesh
axes its arrays have, the block each device holds along a sharded dim, how a whole value is
spread into a pending reduction or a global value laid out, and the communicator that runs
collectives.

`Program` builds the kernels of the entry function of a localized module once. Its first run
is one dispatch loop (like torch.fx's Interpreter) that checks each result against its type (a
mismatch is a compiler bug: `ExecutionError`); later runs are the same steps as generated
straight-line Python. Both free every value after its last use.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np

from dtensor_compiler.errors import DTensorError, ShapeError
from dtensor_compiler.ir import opdef
from dtensor_compiler.ir.core import Function, Level, Module, Operation
from dtensor_compiler.ir.mesh_shape import MeshShape
from dtensor_compiler.ir.opdef import OpDef
from dtensor_compiler.ir.sharding import ReduceOp, Sharding
from dtensor_compiler.ir.types import TensorType
from dtensor_compiler.runtime.box import Box


class ExecutionError(DTensorError, RuntimeError):
    """A program broke its own types while running (a compiler bug), or has an op the
    backend has no kernel for."""


class Communicator(Protocol):
    """Runs the collectives of one program. Method names are the collective op names; each
    takes the operand array, its layout, and the op's attributes; those that change the
    block shape also take the result's (`block`), which says where padding is cut off or
    added (see `ir.geometry`)."""

    def all_reduce(self, x: Any, src: Sharding, mesh_dims: tuple[str, ...],
                   op: ReduceOp) -> Any: ...

    def reduce_scatter(self, x: Any, src: Sharding, mesh_dims: tuple[str, ...], op: ReduceOp,
                       axis: int, block: tuple[int, ...]) -> Any: ...

    def all_gather(self, x: Any, src: Sharding, mesh_dims: tuple[str, ...], axis: int,
                   block: tuple[int, ...]) -> Any: ...

    def all_to_all(self, x: Any, src: Sharding, mesh_dims: tuple[str, ...], split_axis: int,
                   concat_axis: int, block: tuple[int, ...]) -> Any: ...

    def local_slice(self, x: Any, src: Sharding, mesh_dims: tuple[str, ...], axis: int,
                    block: tuple[int, ...]) -> Any: ...

    def make_partial(self, x: Any, src: Sharding, mesh_dims: tuple[str, ...], op: ReduceOp
                     ) -> Any: ...


class ExecContext(Protocol):
    """Where kernels run (see the module docstring)."""

    mesh: MeshShape
    mesh_axes: int
    """Leading axes of every array that index devices (the simulated mesh stacks them); 0
    where an array is one device's shard."""

    @property
    def comm(self) -> Communicator:
        """Runs the collectives (read-only here, so an implementation may hold a subtype)."""
        ...

    def block_index(self, mesh_dims: Sequence[str]) -> Any:
        """The block each device holds along a dim sharded over `mesh_dims`: an int, or an
        integer array broadcasting over the mesh axes."""
        ...

    def spread_partial(self, x: Any, sharding: Sharding) -> Any:
        """A value held whole turned into the pending reductions of `sharding`."""
        ...

    def distribute(self, value: np.ndarray, sharding: Sharding) -> Any:
        """A global value laid out as `sharding`, in this context's array form."""
        ...

    @property
    def box(self) -> Box:
        """The devices that run here: the whole mesh on the simulated one, a client's box
        of it on the distributed backend (`box.index_of` says where along the leading mesh
        axes a device's block lies, or that it runs elsewhere)."""
        ...

    def barrier(self, key: str, failure: str | None) -> dict[int, str]:
        """Wait until every device of the mesh has reached the barrier `key` (the same on
        all of them), saying whether something went wrong here (`failure`, None: nothing);
        the failures the other processes reported, by client id (none on the simulated
        mesh, whose devices are all here)."""
        ...


KernelFn = Callable[..., Any]
Kernel = Callable[[Operation, ExecContext], KernelFn]
"""``kernel(op, ctx)`` -> the function from operand arrays to the result array(s)."""
CallKernel = Callable[[Operation, ExecContext, Function], KernelFn | None]
"""``kernel(op, ctx, body)`` for an op that runs a function of the module (``kernel``):
the function from operand arrays to the result array(s), compiled from `body`; None when
the backend cannot compile that body (it then runs op by op)."""
InPlaceKernel = Callable[[Operation, ExecContext, int], KernelFn]
"""Builds the variant of an op's kernel that writes its result into operand `i`'s array
(which has the result's shape and dtype) when that array is writeable, and runs as usual
otherwise (see `Program._reuse_buffers`)."""


class KernelTable:
    """One backend's kernels, one per op definition."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self._kernels: dict[str, Kernel] = {}
        self._in_place: dict[str, InPlaceKernel] = {}
        self._calls: dict[str, CallKernel] = {}

    def register(self, *definitions: OpDef) -> Callable[[Kernel], Kernel]:
        """Decorator: `kernel` runs the ops of `definitions`."""
        def add(kernel: Kernel) -> Kernel:
            for definition in definitions:
                if definition.name in self._kernels:
                    raise ValueError(f"{self.backend} has two kernels for {definition.name}")
                self._kernels[definition.name] = kernel
            return kernel
        return add

    def override(self, *definitions: OpDef) -> Callable[[Kernel], Kernel]:
        """Decorator: `kernel` replaces the kernel this table has for the ops of
        `definitions` (a table `extended` from another's), and the in-place variant of the
        replaced kernel goes (an op keeps none unless one is registered again)."""
        def replace(kernel: Kernel) -> Kernel:
            for definition in definitions:
                if definition.name not in self._kernels:
                    raise ValueError(f"{self.backend} has no kernel for {definition.name} "
                                     "to override")
                self._kernels[definition.name] = kernel
                self._in_place.pop(definition.name, None)
            return kernel
        return replace

    def register_in_place(self, *definitions: OpDef) -> Callable[[InPlaceKernel],
                                                                InPlaceKernel]:
        """Decorator: `kernel` builds the in-place variants of the ops of `definitions`,
        whose results never alias their operands otherwise (elementwise ops)."""
        def add(kernel: InPlaceKernel) -> InPlaceKernel:
            for definition in definitions:
                self._in_place[definition.name] = kernel
            return kernel
        return add

    def register_call(self, *definitions: OpDef) -> Callable[[CallKernel], CallKernel]:
        """Decorator: `kernel` compiles the bodies of the ops of `definitions` (ops that run
        a function of the module). Without one, the executor runs a body op by op."""
        def add(kernel: CallKernel) -> CallKernel:
            for definition in definitions:
                self._calls[definition.name] = kernel
            return kernel
        return add

    def get(self, name: str) -> Kernel | None:
        return self._kernels.get(name)

    def extended(self, backend: str) -> KernelTable:
        """A table for `backend` with this one's kernels, to add to or override."""
        table = KernelTable(backend)
        table._kernels = dict(self._kernels)
        table._in_place = dict(self._in_place)
        table._calls = dict(self._calls)
        return table

    def get_call(self, name: str) -> CallKernel | None:
        return self._calls.get(name)

    def get_in_place(self, name: str) -> InPlaceKernel | None:
        return self._in_place.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._kernels


@dataclass(frozen=True, slots=True)
class _Step:
    fn: KernelFn
    args: tuple[int, ...]
    outs: tuple[int, ...]
    types: tuple[tuple[tuple[int, ...], np.dtype], ...]
    """Expected (array shape, dtype) of each result."""
    free: tuple[int, ...]
    op: Operation


Conform = Callable[[Any, TensorType, Operation], Any]
"""Brings a kernel's result that does not have its exact expected shape to it, or raises
`ExecutionError` (see `Program`)."""
ArrayType = Callable[[TensorType], tuple[tuple[int, ...], np.dtype]]


REUSE_BYTES = 1 << 18
"""The smallest temporary an elementwise op writes its result into rather than allocating
(below it, numpy's allocator is faster than the in-place kernel's call)."""


class Program:
    """The entry function of a localized module, ready to run with one backend's kernels.

    `array_type` gives the array shape and dtype a value of a type has in this backend;
    `conform` is called on a result whose shape or dtype differs from it (the simulated mesh
    broadcasts a value computed once over mesh axes it is the same along, and raises for
    anything else).

    Elementwise ops write their result into an operand that dies there when they can
    (`_reuse_buffers`): a temporary, or an argument at one of the `donated` positions, if
    that array is writeable when the program runs (the executor passes a read-only one
    otherwise).

    The first run goes through `_checked_run`, one dispatch loop that checks every result
    against its type. Shapes are static, so once a run has passed, the program is turned into
    straight-line Python (`source`): one call per op, each value deleted after its last use,
    and the fix-up a result needed (if any) applied without asking again.
    """

    def __init__(self, module: Module, kernels: KernelTable, ctx: ExecContext,
                 array_type: ArrayType, conform: Conform,
                 donated: frozenset[int] = frozenset()) -> None:
        if module.level is not Level.LOCAL:
            raise ExecutionError("only localized modules run; run the 'localize' pass first")
        func = module.main
        self.name = func.name
        self._conform = conform
        slot: dict[int, int] = {}
        for value in func.values():
            slot[id(value)] = len(slot)
        self._size = len(slot)
        self._args = [(slot[id(a)], a.name_hint or "?", a.type, array_type(a.type))
                      for a in func.args]
        self._results = [slot[id(v)] for v in func.results]
        last_use: dict[int, int] = {}
        for i, op in enumerate(func.ops):
            for r in op.results:
                last_use[slot[id(r)]] = i  # a result nothing uses dies with its op
            for v in op.operands:
                last_use[slot[id(v)]] = i
        returned = set(self._results)
        dead: list[list[int]] = [[] for _ in func.ops]
        for s, i in last_use.items():
            if s not in returned:
                dead[i].append(s)
        self._steps = []
        for op, free in zip(func.ops, dead):
            self._steps.append(_Step(
                _build(op, module, kernels, ctx, array_type, conform),
                tuple(slot[id(v)] for v in op.operands),
                tuple(slot[id(r)] for r in op.results),
                tuple(array_type(r.type) for r in op.results), tuple(sorted(free)), op))
        self._reuse_buffers(donated, kernels, ctx, last_use, returned)
        self._fixups: list[list[int]] = [[] for _ in self._steps]
        """Per step, the results (by position) the first run had to conform."""
        self._fast: Callable[..., list[Any]] | None = None
        self.source: str | None = None
        """The straight-line code the program runs as after its first run."""

    def _reuse_buffers(self, donated: frozenset[int], kernels: KernelTable, ctx: ExecContext,
                       last_use: dict[int, int], returned: set[int]) -> None:
        """Let an op with an in-place variant write its result into an operand that dies
        there and has the result's array type: a donated argument (or a temporary already
        written into one), or a temporary of at least `REUSE_BYTES` an in-place-capable op
        made (a fresh array), provided that nothing that may view the same buffer is read
        later or returned. Ops without an in-place variant may return
        views of their operands, so their results count as viewing the same buffers."""
        donated_slots = {self._args[p][0] for p in donated}
        arrays = {s: array for s, _, _, array in self._args}
        arrays.update((o, t) for step in self._steps for o, t in zip(step.outs, step.types))
        views: dict[int, frozenset[int]] = {}
        """Per value, the buffers (named by the value that made each) it may show."""
        viewers: dict[int, set[int]] = {}
        writable = set(donated_slots)
        """The buffers an op may write over: donated arguments and fresh temporaries."""
        for s, _, _, _ in self._args:
            views[s] = frozenset({s})
            viewers[s] = {s}

        def reusable(operand: int, i: int, array: tuple[tuple[int, ...], np.dtype]) -> bool:
            buffers = views.get(operand, frozenset())
            if last_use.get(operand) != i or operand in returned or len(buffers) != 1 \
                    or not buffers <= writable:
                return False
            if not buffers <= donated_slots:
                shape, dtype = array  # a temporary: worth it only where allocating costs
                if math.prod(shape) * dtype.itemsize < REUSE_BYTES:
                    return False
            if arrays.get(operand) != array:
                return False
            (buffer,) = buffers
            return all(v == operand or (last_use.get(v, -1) <= i and v not in returned)
                       for v in viewers[buffer])

        for i, step in enumerate(self._steps):
            build = kernels.get_in_place(step.op.name)
            if build is not None and len(step.outs) == 1:
                into = next((j for j, a in enumerate(step.args)
                             if reusable(a, i, step.types[0])), None)
                (out,) = step.outs
                if into is None:
                    views[out] = frozenset({out})
                    writable.add(out)
                else:
                    self._steps[i] = replace(step, fn=build(step.op, ctx, into))
                    views[out] = views[step.args[into]]
            else:
                shown = frozenset().union(*(views.get(a, frozenset()) for a in step.args))
                for out in step.outs:
                    views[out] = shown
            for out in step.outs:
                for buffer in views[out]:
                    viewers.setdefault(buffer, set()).add(out)

    def run(self, inputs: Sequence[Any]) -> list[Any]:
        """Arrays in (one per argument, in this backend's form), result arrays out."""
        if len(inputs) != len(self._args):
            raise ShapeError(f"@{self.name} takes {len(self._args)} inputs, got {len(inputs)}")
        for (_, name, type, (shape, dtype)), x in zip(self._args, inputs):
            if x.shape != shape or x.dtype != dtype:
                raise ShapeError(f"input %{name} of type {type.text()} must be a {dtype} array "
                                 f"of shape {list(shape)}, got {x.dtype} {list(x.shape)}")
        if self._fast is not None:
            return self._fast(*inputs)
        outs = self._checked_run(inputs)
        self._fast = self._straight_line()
        return outs

    def _checked_run(self, inputs: Sequence[Any]) -> list[Any]:
        env: list[Any] = [None] * self._size
        for (s, *_), x in zip(self._args, inputs):
            env[s] = x
        for step, fixups in zip(self._steps, self._fixups):
            out = step.fn(*[env[a] for a in step.args])
            values = (out,) if len(step.outs) == 1 else tuple(out or ())
            for k, (s, x, (shape, dtype), r) in enumerate(zip(step.outs, values, step.types,
                                                               step.op.results)):
                if x.shape != shape or x.dtype != dtype:
                    x = self._conform(x, r.type, step.op)
                    fixups.append(k)
                env[s] = x
            for s in step.free:
                env[s] = None
        return [env[s] for s in self._results]

    def _straight_line(self) -> Callable[..., list[Any]]:
        namespace: dict[str, Any] = {}
        lines = [f"def run({', '.join(f'v{s}' for s, *_ in self._args)}):"]
        for i, (step, fixups) in enumerate(zip(self._steps, self._fixups)):
            namespace[f"k{i}"] = step.fn
            call = f"k{i}({', '.join(f'v{a}' for a in step.args)})"
            outs = [f"v{s}" for s in step.outs]
            if not outs:
                lines.append(f"    {call}")
            else:
                lines.append(f"    {', '.join(outs)} = {call}")
                for k in fixups:
                    namespace[f"fix{i}_{k}"] = self._fixup(step, k)
                    lines.append(f"    {outs[k]} = fix{i}_{k}({outs[k]})")
            if step.free:
                lines.append(f"    del {', '.join(f'v{s}' for s in step.free)}")
        lines.append(f"    return [{', '.join(f'v{s}' for s in self._results)}]")
        self.source = "\n".join(lines) + "\n"
        exec(compile(self.source, f"<program @{self.name}>", "exec"), namespace)
        fast: Callable[..., list[Any]] = namespace["run"]
        return fast

    def _fixup(self, step: _Step, k: int) -> Callable[[Any], Any]:
        result = step.op.results[k]
        conform = self._conform
        return lambda x: conform(x, result.type, step.op)


def _build(op: Operation, module: Module, kernels: KernelTable, ctx: ExecContext,
           array_type: ArrayType, conform: Conform) -> KernelFn:
    """The kernel of one op. An op that runs a function of the module (`OpDef.calls`) gets
    the backend's compiled kernel of that function where the backend compiles it, and runs
    the function's ops one by one (a `Program` of its own) otherwise."""
    callee = opdef.lookup(op.name).calls
    if callee is not None:
        body = module.function(str(op.attrs[callee]))
        if body is None:
            raise ExecutionError(f"{op.name} runs @{op.attrs[callee]}, which the module lacks")
        compile_body = kernels.get_call(op.name)
        compiled = compile_body(op, ctx, body) if compile_body is not None else None
        if compiled is not None:
            return compiled
        program = Program(Module(module.mesh, [body], Level.LOCAL, body.name), kernels, ctx,
                          array_type, conform)
        if len(op.results) == 1:
            return lambda *xs: program.run(xs)[0]
        return lambda *xs: tuple(program.run(xs))
    kernel = kernels.get(op.name)
    if kernel is None:
        raise ExecutionError(f"the {kernels.backend} backend has no kernel for op {op.name!r}")
    return kernel(op, ctx)
