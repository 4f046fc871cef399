"""`compile`: a numpy function in, a partitioned SPMD program on the simulated mesh out.

    @dtc.compile(in_layouts=(...), out_layouts=...)
    def f(x, w): ...

    y = f(x, w)             # numpy arrays or DTensors in, DTensor(s) out
    low = f.lower(x, w)     # or dtc.TensorSpec(shape, dtype) for inputs
    low.ir("propagate-layouts"), low.collectives(), low.comm_bytes()

A call traces the function on the argument types (global shape, dtype, and the layout when the
argument's in_layout or its DTensor names one), runs the pass pipeline (default
`passes.DEFAULT_PIPELINE`) keeping the IR after every stage, and executes the localized module
with the chosen backend (`runtime.backends`; ``numpy``, the simulated mesh, by default). The
result of all that is a `Lowered`, cached on the `CompiledFunction` per (mesh, argument
types).

Arguments are positional: numpy arrays (anything `np.asarray` makes a numeric array of),
DTensors or DVariables (their layout is the argument's layout, and must equal its in_layout
when one is given), for `lower` also `TensorSpec`s, Python numbers (constants of the
program), and dicts, lists and tuples of those, nested (a dict of parameters): the function
gets them in that structure, their arrays are the program's arguments (named by their paths,
``%params_w``), and the structure is part of the program. A function returning several values
gives a tuple of DTensors; one value (or a one-element tuple) gives one DTensor.

The mesh is the one the layouts name (they must all name the same), else the mesh of the
DTensor arguments, else `get_default_mesh()`, else `create_mesh()`.

Collective records describe the last global-shape IR, the module as it stands just before the
pass that localizes it: one record per data-moving collective (``local_slice`` and
``make_partial`` move no data).
"""

from __future__ import annotations

import functools
import inspect
import re
import struct
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from dtensor_compiler import tracing
from dtensor_compiler.api import backend_for, get_default_mesh
from dtensor_compiler.checkpoint import writer
from dtensor_compiler.cost import DEFAULT_COST_MODEL, CostModel
from dtensor_compiler.dtensor import DistributedValue, DTensor
from dtensor_compiler.errors import DonatedError, LayoutError, TraceError
from dtensor_compiler.explain import Collective, explain_table, kernels_table
from dtensor_compiler.ir import opdef
from dtensor_compiler.ir.collector import collector_paused
from dtensor_compiler.ir.core import Level, Module
from dtensor_compiler.ir.ops import checkpoint as checkpoint_ops
from dtensor_compiler.ir.printer import Namer, op_text
from dtensor_compiler.ir.sharding import ReduceOp
from dtensor_compiler.ir.types import TensorType, dtype_name, native_array, numpy_dtype
from dtensor_compiler.layout import MATCH, Layout
from dtensor_compiler.mesh import Mesh, create_mesh, local_cpu_count
from dtensor_compiler.pass_manager import ModulePass, PassContext, PassManager, Stage
from dtensor_compiler.passes import DEFAULT_PIPELINE
from dtensor_compiler.runtime.backends import (
    Backend,
    Executor,
    KernelRun,
    Storage,
    get_backend,
)
from dtensor_compiler.tracing.outputs import LEAF, OutputTree, flatten, flatten_with_paths


@dataclass(frozen=True)
class TensorSpec:
    """Stands for an input of `shape` and `dtype` when only its type matters (`lower`)."""

    shape: tuple[int, ...]
    dtype: np.dtype = np.dtype(np.float32)

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "dtype", np.dtype(self.dtype))


def _collectives(module: Module, cost_model: CostModel) -> tuple[Collective, ...]:
    """The records of the data-moving collectives of a global-shape module."""
    func, mesh = module.main, module.mesh
    namer = Namer(func)
    out = []
    for op in func.ops:
        collective = opdef.lookup(op.name).collective
        if collective is None or not collective.moves_data:
            continue
        mesh_dims = op.attrs["mesh_dims"]
        assert isinstance(mesh_dims, tuple)
        nbytes = op.type.local_nbytes(mesh)
        seconds = cost_model.collective_time(collective, mesh_dims, mesh,
                                             op.operands[0].type.local_nbytes(mesh), nbytes)
        out.append(Collective(op.name, mesh_dims, nbytes, seconds, op_text(op, namer)))
    return tuple(out)


def _check_type(name: str, shape: tuple[int, ...], dtype: np.dtype, type: TensorType) -> None:
    if shape != type.shape or dtype != numpy_dtype(type.dtype):
        raise TraceError(f"argument {name!r} is {dtype}{list(shape)}; the program takes "
                         f"{type.text()}")


def _layout(t: TensorType, mesh: Mesh) -> Layout:
    assert t.sharding is not None, "propagation lays out every argument and result"
    return Layout.from_sharding(t.sharding, mesh)


def _refuse_unordered_partials(module: Module, arg_names: Sequence[str]) -> None:
    """Raise LayoutError where an argument or an op's result (a relayout's, or one returned)
    of the traced program is a complex value pending a max or min: complex numbers have no
    order."""
    func = module.main
    for value in (*func.args, *(r for op in func.ops for r in op.results)):
        t = value.type
        if t.sharding is None or not t.sharding.partial or not np.issubdtype(
                numpy_dtype(t.dtype), np.complexfloating):
            continue
        for m, kind in t.sharding.partial:
            if kind in (ReduceOp.MAX, ReduceOp.MIN):
                op = value.owner
                what = (f"argument {arg_names[func.args.index(value)]!r}" if op is None else
                        f"{op.loc}: {op.name}" if op.loc is not None else op.name)
                raise LayoutError(f"{what} is {t.text()}: a complex value cannot be pending "
                                  f"a {kind} over {m}, complex numbers have no order")


@dataclass(frozen=True)
class _Inputs:
    """The structure of a call's arguments when some are dicts, lists or tuples: per
    argument, its tree (a bare array or number is a leaf). Types and values are then per
    leaf."""

    trees: tuple[OutputTree, ...]
    constants: frozenset[int]
    """The leaves that are Python numbers (constants of the program)."""

    def taken(self) -> list[bool]:
        """Per argument, whether `Lowered.run` takes it (not a number given to `lower`)."""
        out, start = [], 0
        for tree in self.trees:
            out.append(not (tree is LEAF and start in self.constants))
            start += tree.leaves
        return out

    def owners(self) -> list[int]:
        """Per leaf, the position of the argument it is in."""
        return [i for i, tree in enumerate(self.trees) for _ in range(tree.leaves)]

    def names(self, arguments: Sequence[str]) -> list[str]:
        """Per leaf, its IR name: the argument's, and the keys and indices to it (``p_w``
        for ``p['w']``)."""
        return [name + re.sub(r"[^0-9A-Za-z_]+", "_", path).rstrip("_")
                for name, tree in zip(arguments, self.trees) for path in tree.paths()]

    def paths(self, arguments: Sequence[str]) -> list[str]:
        """Per leaf, the argument's name and the keys and indices to it (``p['w']``), as
        messages name it."""
        return [name + path for name, tree in zip(arguments, self.trees)
                for path in tree.paths()]


class Lowered:
    """A compiled program for one set of argument types: its IR after every stage, its
    collectives, and `run`."""

    def __init__(self, mesh: Mesh, arg_names: Sequence[str], arg_types: Sequence[TensorType],
                 result_types: Sequence[TensorType], stages: Sequence[Stage],
                 global_stage: str, module: Module, collectives: tuple[Collective, ...],
                 backend: Backend, donated: frozenset[int] = frozenset(),
                 outputs: OutputTree | None = None, inputs: _Inputs | None = None) -> None:
        self.mesh = mesh
        self._inputs = inputs
        self.outputs = outputs
        """How the traced function returned its results (nested tuples, lists, dicts), which
        `run` rebuilds; None: one result as itself, several as a tuple."""
        self.backend = backend
        self.donated = donated
        """The positions of the arguments `run` takes over: their storage may hold results
        afterwards, and a DTensor (or DVariable) given there raises `DonatedError` when
        read again."""
        self._arg_names = tuple(arg_names)
        self._arg_types = tuple(arg_types)
        self._result_types = tuple(result_types)
        self.in_layouts = tuple(_layout(t, mesh) for t in arg_types)
        """The layout of every argument, as given or as propagation chose it."""
        self.out_layouts = tuple(_layout(t, mesh) for t in result_types)
        self._stages = tuple(stages)
        self.global_stage = global_stage
        """The last stage with global shapes, every collective in place (the records'
        stage)."""
        self._collectives = collectives
        self.module = module
        """The final module (localized by the default pipeline)."""
        self._executor: Executor | None = None
        self._saves = any(op.name == checkpoint_ops.SAVE_SHARD.name for op in module.main.ops)
        """Whether running the program writes a checkpoint."""

    @property
    def stages(self) -> list[str]:
        """Stage names in order: ``trace``, then one per pass."""
        return [s.name for s in self._stages]

    def ir(self, stage: str = "final") -> str:
        """The printed IR after `stage` (``"final"``: after the last one)."""
        if stage == "final":
            stage = self._stages[-1].name
        for s in self._stages:
            if s.name == stage:
                if s.ir is None:
                    raise ValueError("IR stages were not kept: compile with keep_ir=True")
                return s.ir
        raise ValueError(f"no stage {stage!r}; stages are {self.stages + ['final']}")

    def collectives(self) -> list[Collective]:
        """One `Collective` record per collective of the final program, in program order: `kind`,
        `mesh_dims`, `bytes` of its per-device result buffer, `seconds` under the cost model,
        `reason`."""
        return list(self._collectives)

    def explain(self) -> str:
        """The table of collectives with bytes, estimated time and reason, and the totals;
        on a backend that generates kernels, then the table of what runs each compute step
        (`kernel_runs`)."""
        table = explain_table(self._collectives)
        runs = self.kernel_runs()
        return table if not runs else table + "\n" + kernels_table(self.backend.name, runs)

    def comm_bytes(self) -> int:
        """Per-device result bytes of all collectives together."""
        return sum(c.bytes for c in self._collectives)

    def kernel_runs(self) -> list[KernelRun]:
        """What runs each compute step, in program order: a generated kernel, or an op
        outside the templates and what computes it (the triton backend's; the numpy backend
        generates no kernels: empty)."""
        runs = self.backend.kernel_runs
        return [] if runs is None else runs(self.module)

    def kernel_sources(self) -> dict[str, str]:
        """Every compute step's source by name (`kernel_runs`): a generated kernel's, or a
        comment saying what computes an op or a body outside the templates."""
        return {run.name: run.source for run in self.kernel_runs()}

    def prepare(self) -> Executor:
        """The program's executor, made now if it was not yet (it is made at the first run
        otherwise; on a mesh several clients hold, making it compares this program's plan
        with theirs, a step every client takes in the same order)."""
        if self._executor is None:
            self._executor = self.backend.executor(self.module, self.donated)
        return self._executor

    def run(self, *args: object) -> DTensor | tuple[DTensor, ...]:
        """Run on numpy arrays or DTensors of the lowered types, the Python numbers given to
        `lower` left out (a dict, list or tuple among them is given whole, numbers in it
        included, which are ignored: they are constants of the program); DTensors out, in
        the structure the function returned them in."""
        if self._inputs is None:
            return self.run_leaves(args)
        trees, constants = self._inputs.trees, self._inputs.constants
        taken = self._inputs.taken()
        if len(args) != sum(taken):
            raise TraceError(f"the program takes {sum(taken)} arguments, got {len(args)}")
        given = iter(enumerate(args))
        leaves: list[object] = []
        for tree, takes in zip(trees, taken):
            if not takes:
                leaves.append(None)
                continue
            position, arg = next(given)
            these, shape = (flatten(arg) if isinstance(arg, (dict, list, tuple)) else
                            ([arg], LEAF))
            if not tree.matches(shape):
                raise TraceError(f"argument {position} is {shape.text()}, the program takes "
                                 f"{tree.text()}")
            leaves += these
        return self.run_leaves([v for i, v in enumerate(leaves) if i not in constants])

    def run_leaves(self, args: Sequence[object]) -> DTensor | tuple[DTensor, ...]:
        """`run` on the arrays of the arguments flattened (the leaves of dicts, lists and
        tuples in order, constants left out)."""
        if len(args) != len(self._arg_types):
            raise TraceError(f"the program takes {len(self._arg_types)} arguments, got "
                             f"{len(args)}")
        inputs = [self._input(*arg) for arg in
                  zip(self._arg_names, args, self._arg_types, self.in_layouts)]
        if self._saves and not writer.in_writer_thread():
            writer.wait_for_saves()  # checkpoint programs run in the order they were made
        outs = self.prepare().run(inputs)
        results = tuple(DTensor.of_program(x, layout, t.shape)
                        for x, t, layout in zip(outs, self._result_types, self.out_layouts))
        if self.donated:
            for position in self.donated:
                given = args[position]
                if isinstance(given, DistributedValue):
                    given.as_dtensor().donated(f"@{self.module.main.name}")
        if self.outputs is not None:
            return self.outputs.unflatten(results)  # type: ignore[return-value]
        return results[0] if len(results) == 1 else results

    def _input(self, name: str, value: object, arg_type: TensorType, layout: Layout
               ) -> Storage:
        """`value`'s storage, checked against the argument's type and layout."""
        if (type(value) is DTensor and value.layout == layout and value.shape == arg_type.shape
                and not value.is_donated):
            return value.storage  # the common case, decided without the checks below
        if isinstance(value, DistributedValue):
            tensor = value.as_dtensor()
            if tensor.donated_to is not None:
                raise DonatedError(f"argument {name!r} was donated to {tensor.donated_to}, "
                                   "which may have written its result into its buffer; pass "
                                   "that result instead")
            _check_type(name, tensor.shape, tensor.dtype, arg_type)
            if tensor.layout != layout:
                raise LayoutError(f"argument {name!r} has layout {tensor.layout.short_text()} "
                                  f"on {tensor.mesh.short_text()}; the program takes "
                                  f"{layout.short_text()} on {self.mesh.short_text()}")
            return tensor.storage
        array = native_array(value)
        _check_type(name, array.shape, array.dtype, arg_type)
        assert arg_type.sharding is not None
        return self.backend.place(array, arg_type.sharding, self.mesh.mesh_shape())


def _flat_out_layouts(layouts: object
                      ) -> tuple[Layout | tuple[object, ...] | None, OutputTree | None]:
    """`out_layouts` flattened as the returned values are (they may nest like those, or be
    flat), and their nesting."""
    if layouts is None or isinstance(layouts, Layout):
        return layouts, None
    try:
        flat, tree = flatten(layouts)
    except TypeError as e:
        raise TypeError(f"out_layouts holds {e}") from None
    return tuple(flat), tree


def _normalize_in_layouts(layouts: Layout | Sequence[object] | None
                          ) -> tuple[object, ...] | None:
    """The in_layouts, one entry per argument: a Layout, None, or for an argument that is a
    dict, list or tuple, its layouts nested the same way (checked like the others)."""
    if layouts is None or isinstance(layouts, Layout):
        return _normalize_layouts(layouts, "in_layouts")
    if isinstance(layouts, dict):
        raise TypeError("in_layouts is a dict; give one entry per argument: "
                        "(dict of layouts,) for a function of one dict argument")
    entries = tuple(layouts)
    nested = [isinstance(e, (dict, list, tuple)) for e in entries]
    _normalize_layouts([None if n else e for e, n in zip(entries, nested)], "in_layouts")
    for i, entry in enumerate(entries):
        if nested[i]:
            try:
                leaves = flatten(entry, _is_layout_leaf)[0]
            except TypeError as e:
                raise TypeError(f"in_layouts[{i}] must hold Layouts or None, got {e}") from None
            _normalize_layouts(leaves, f"in_layouts[{i}]")
    return entries


def _normalize_layouts(layouts: Layout | Sequence[object] | None, what: str
                       ) -> tuple[Layout | None, ...] | None:
    """The layouts, one per argument or result."""
    if layouts is None:
        return None
    given = (layouts,) if isinstance(layouts, Layout) else tuple(layouts)
    entries: list[Layout | None] = []
    for i, layout in enumerate(given):
        if layout is not None and not isinstance(layout, Layout):
            raise TypeError(f"{what}[{i}] must be a Layout or None, got {type(layout).__name__}")
        entries.append(layout)
        if layout is not None and MATCH in layout.sharding_specs:
            raise LayoutError(f"{what}[{i}] has a MATCH spec; MATCH is only valid as a "
                              "relayout target")
        if layout is not None and layout.is_parted():
            raise LayoutError(f"{what}[{i}] is parted ({layout.short_text()}); compiled "
                              "functions take static layouts")
    return tuple(entries)


def _arg_names(signature: inspect.Signature | None, count: int) -> list[str]:
    """IR names of `count` positional arguments: parameter names, ``args0``, ... for ``*args``."""
    names: list[str] = []
    params = signature.parameters.values() if signature is not None else ()
    for p in params:
        if p.kind is inspect.Parameter.VAR_POSITIONAL:
            names += [f"{p.name}{i}" for i in range(count - len(names))]
        elif p.kind in (inspect.Parameter.POSITIONAL_ONLY,
                        inspect.Parameter.POSITIONAL_OR_KEYWORD):
            names.append(p.name)
    names += [f"arg{i}" for i in range(len(names), count)]
    return names[:count]


class CompiledFunction:
    """A numpy function compiled for the simulated mesh; see the module docstring."""

    __wrapped__: Callable[..., Any]
    """The numpy function itself (set by `functools.update_wrapper`)."""

    def __init__(self, fn: Callable[..., Any],
                 in_layouts: Layout | Sequence[Layout | None] | None = None,
                 out_layouts: Layout | Sequence[object] | Mapping[object, object] | None = None,
                 backend: str | None = None, pipeline: str | None = None,
                 cost_model: CostModel | None = None, verify: bool = False,
                 specs: Sequence[TensorSpec] | None = None, keep_ir: bool = True,
                 donate_argnums: int | Sequence[int] = ()) -> None:
        self._backend_name = backend
        if backend is not None:
            get_backend(backend)  # an unknown name fails here, not at the first call
        donate = (donate_argnums,) if isinstance(donate_argnums, int) else tuple(donate_argnums)
        if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in donate):
            raise TypeError(f"donate_argnums must be argument positions (ints >= 0), got "
                            f"{donate_argnums!r}")
        self._donate = frozenset(donate)
        self._fn = fn
        self._name = tracing.function_name(fn)
        try:
            self._signature: inspect.Signature | None = inspect.signature(fn)
        except (TypeError, ValueError):
            self._signature = None
        self._in_layouts = _normalize_in_layouts(in_layouts)
        flat_out, self._out_tree = _flat_out_layouts(out_layouts)
        self._out_layouts = _normalize_layouts(flat_out, "out_layouts")
        given = [layout for entry in self._in_layouts or () for layout in _layout_leaves(entry)]
        meshes = {layout.mesh for layout in given + list(self._out_layouts or ())
                  if layout is not None}
        if len(meshes) > 1:
            raise LayoutError("in_layouts and out_layouts must all be on one mesh; they name "
                              + ", ".join(sorted(m.short_text() for m in meshes)))
        self._layout_mesh = meshes.pop() if meshes else None
        default = get_backend(backend).pipeline if backend is not None else None
        self._passes: list[ModulePass] = PassManager.parse(
            pipeline or default or DEFAULT_PIPELINE).passes
        self._cost_model = cost_model or DEFAULT_COST_MODEL
        self._verify = verify
        self._keep_ir = keep_ir
        self._cache: dict[tuple[Mesh, tuple[TensorType | _Constant, ...], _Inputs | None],
                          Lowered] = {}
        self._by_call_key: dict[Hashable, Lowered] = {}
        if specs is not None and not all(isinstance(s, TensorSpec) for s in specs):
            raise TypeError("specs must be TensorSpecs, one per argument")
        self.specs: tuple[TensorSpec, ...] | None = None if specs is None else tuple(specs)
        """Example argument types for tools that lower without arguments (the CLI)."""
        functools.update_wrapper(self, fn, updated=())

    def __call__(self, *args: object, **kwargs: object) -> DTensor | tuple[DTensor, ...]:
        if kwargs:
            raise TraceError(f"{self._name}: compiled functions take their arrays "
                             f"positionally; got keyword arguments {sorted(kwargs)}")
        key, leaves = self._call_key(args)
        lowered = self._by_call_key.get(key) if key is not None else None
        if lowered is not None:
            return lowered.run_leaves(leaves)
        if key is None and _holds_traced(args):
            # called while another function is traced (a compiled function calling this
            # one, or grad of it): traced into that program, planned with the rest of it
            return self._fn(*args)
        mesh, types, values, inputs = self._resolve(args)
        lowered = self._lowered(mesh, types, inputs)
        if key is not None:
            self._by_call_key[key] = lowered
        return lowered.run_leaves(values)

    def _call_key(self, args: Sequence[object]) -> tuple[Hashable | None, list[object]]:
        """What decides the program of a call whose arguments are numpy arrays, DTensors and
        Python numbers, or dicts, lists and tuples of them (their nesting as `_resolve`
        flattens it, the leaves' shapes, dtypes and layouts, the numbers, and the mesh a call
        without layouts runs on), so a repeated call skips resolving its arguments; with the
        arrays in flattening order. (None, []) for any other call."""
        parts: list[Hashable] = []
        leaves: list[object] = []
        placed = self._layout_mesh is not None
        for a in args:
            these: list[object] = [a]
            if isinstance(a, (dict, list, tuple)):
                try:
                    these, tree = flatten(a, _is_call_leaf)
                except TypeError:
                    return None, []
                parts.append(tree)
            for leaf in these:
                kind = type(leaf)
                if kind is np.ndarray:
                    array = cast(np.ndarray, leaf)
                    parts.append((array.shape, array.dtype))
                    leaves.append(leaf)
                elif kind is DTensor:
                    tensor = cast(DTensor, leaf)
                    parts.append((tensor.shape, tensor.dtype, tensor.layout))
                    leaves.append(leaf)
                    placed = True
                elif kind in _NUMBERS:
                    parts.append(_Constant(cast(Number, leaf)))
                else:
                    return None, []
        if not placed:  # the mesh `_mesh` makes
            parts.append(get_default_mesh() or local_cpu_count())
        return tuple(parts), leaves

    def lower(self, *args: object, locations: bool = False) -> Lowered:
        """Compile for arguments given as arrays, DTensors or `TensorSpec`s (and Python
        numbers, which are constants of the program). With `locations`, the kept IR of every
        stage (`Lowered.ir`) ends each op with its source location; that lowering is made
        afresh, not cached."""
        mesh, types, _, inputs = self._resolve(args)
        if locations:
            with collector_paused():
                return self._compile(mesh, types, inputs, locations=True)
        return self._lowered(mesh, types, inputs)

    # -- arguments -----------------------------------------------------------------------------
    def _resolve(self, args: Sequence[object]
                 ) -> tuple[Mesh, list[TensorType | _Constant], list[object], _Inputs | None]:
        """The mesh, the argument types (with pinned shardings; a Python number is a
        `_Constant`), the values of the arguments that are not constants, and, when some
        argument is a dict, list or tuple, the structure of every argument: then the types
        and values are those of the leaves, in order."""
        if self._signature is not None:
            try:
                self._signature.bind(*args)
            except TypeError as e:
                raise TraceError(f"{self._name}{self._signature}: {e}") from None
        names = _arg_names(self._signature, len(args))
        layouts = self._in_layouts or (None,) * len(args)
        if len(layouts) != len(args):
            raise LayoutError(f"in_layouts has {len(layouts)} entries, but {self._name} got "
                              f"{len(args)} arguments")
        if self._donate and max(self._donate) >= len(args):
            raise TraceError(f"{self._name}: donate_argnums {max(self._donate)} is out of "
                             f"range for {len(args)} arguments")
        trees = [_tree_of(name, a) for name, a in zip(names, args)]
        nested = any(tree is not LEAF for _, _, tree in trees)
        mesh = self._mesh([leaf for leaves, _, _ in trees for leaf in leaves])
        types: list[TensorType | _Constant] = []
        values = []
        for i, (name, (leaves, paths, tree), layout) in enumerate(zip(names, trees, layouts)):
            for leaf, path, leaf_layout in zip(leaves, paths,
                                               _leaf_layouts(name, layout, leaves, tree)):
                what = name + path
                if type(leaf) in _NUMBERS:
                    if i in self._donate and tree is LEAF:  # (a container's numbers stay)
                        raise TraceError(f"argument {what!r} is a Python number, which cannot "
                                         "be donated (donate_argnums names arrays)")
                    if leaf_layout is not None:
                        raise LayoutError(f"argument {what!r} is a Python number, a constant "
                                          "of the program, and takes no layout (its in_layouts "
                                          "entry must be None)")
                    types.append(_Constant(cast(Number, leaf)))
                    continue
                arg_type, value = _argument(what, leaf, leaf_layout, mesh)
                types.append(arg_type)
                values.append(value)
        inputs = _Inputs(tuple(tree for _, _, tree in trees), frozenset(
            i for i, t in enumerate(types) if isinstance(t, _Constant))) if nested else None
        return mesh, types, values, inputs

    def _mesh(self, args: Sequence[object]) -> Mesh:
        if self._layout_mesh is not None:
            return self._layout_mesh
        for value in args:
            if isinstance(value, DistributedValue):
                return value.mesh
        return get_default_mesh() or create_mesh()

    # -- compiling -----------------------------------------------------------------------------
    def _lowered(self, mesh: Mesh, types: list[TensorType | _Constant],
                 inputs: _Inputs | None) -> Lowered:
        key = (mesh, tuple(types), inputs)
        if key not in self._cache:
            with collector_paused():
                self._cache[key] = self._compile(mesh, types, inputs)
        return self._cache[key]

    def _compile(self, mesh: Mesh, types: list[TensorType | _Constant],
                 inputs: _Inputs | None, locations: bool = False) -> Lowered:
        if inputs is None:
            all_names = shown = _arg_names(self._signature, len(types))
        else:
            arguments = _arg_names(self._signature, len(inputs.trees))
            all_names, shown = inputs.names(arguments), inputs.paths(arguments)
        names = [n for n, t in zip(all_names, types) if isinstance(t, TensorType)]
        shown = [n for n, t in zip(shown, types) if isinstance(t, TensorType)]
        tensors = [t for t in types if isinstance(t, TensorType)]
        constants = {i: t.value for i, t in enumerate(types) if isinstance(t, _Constant)}
        out_shardings = None if self._out_layouts is None else [  # (one device: any rank)
            None if layout is None or layout.is_single_device() else layout.sharding
            for layout in self._out_layouts]
        module, outputs = tracing.trace_outputs(self._fn, tensors, names, mesh.mesh_shape(),
                                                out_shardings, name=self._name,
                                                constants=constants,
                                                inputs=None if inputs is None else inputs.trees)
        tree = self._out_tree
        if tree is not None and not tree.is_flat() and not tree.matches(outputs):
            raise LayoutError(f"out_layouts nest as {tree.text()}, but {self._name} returns "
                              f"{outputs.text()}: give them nested the same way, or flat (one "
                              "per array, in that order)")
        _refuse_unordered_partials(module, shown)
        owners = (range(len(types)) if inputs is None else inputs.owners())
        positions = [owner for owner, t in zip(owners, types) if isinstance(t, TensorType)]
        donated = frozenset(j for j, i in enumerate(positions) if i in self._donate)
        return lower_module(mesh, module, shown, self._passes, verify=self._verify,
                            keep_ir=self._keep_ir or locations, locations=locations,
                            cost_model=self._cost_model, backend=get_backend(
                                self._backend_name or backend_for(mesh)),
                            donated=donated, outputs=outputs,
                            inputs=inputs)


def lower_module(mesh: Mesh, module: Module, arg_names: Sequence[str],
                 passes: Sequence[ModulePass], *, backend: Backend,
                 cost_model: CostModel = DEFAULT_COST_MODEL, verify: bool = True,
                 keep_ir: bool = True, locations: bool = False,
                 lowered: type[Lowered] | None = None, input_stage: str = "trace",
                 donated: frozenset[int] = frozenset(),
                 outputs: OutputTree | None = None,
                 inputs: _Inputs | None = None) -> Lowered:
    """Run `passes` over a traced or built global module (its stage is named `input_stage`)
    and wrap the result as a `Lowered` (or the subclass `lowered`); `outputs` is the
    structure its results are returned in (`Lowered.outputs`), `inputs` the structure of its
    arguments when some are dicts, lists or tuples (`Lowered.run`)."""
    snapshot: list[tuple[str, tuple[Collective, ...], list[TensorType], list[TensorType]]] = []
    manager = PassManager(list(passes), verify=verify, keep_ir=keep_ir, locations=locations,
                          ctx=PassContext(cost_model))
    stages = manager.stages  # (not the manager: its hook would hold it in a cycle)

    def global_facts(m: Module) -> tuple[str, tuple[Collective, ...], list[TensorType],
                                         list[TensorType]]:
        """What `Lowered` keeps of the last global-shape module: its stage name, collectives
        and argument and result types."""
        return (stages[-1].name, _collectives(m, cost_model),
                [a.type for a in m.main.args], [v.type for v in m.main.results])

    def before_each(p: ModulePass, m: Module) -> None:
        if not snapshot and p.produces is not None and p.produces is not Level.GLOBAL:
            snapshot.append(global_facts(m))

    manager.before_each = before_each
    manager.run(module, input_stage=input_stage)
    if not snapshot:
        snapshot.append(global_facts(module))
    global_stage, collectives, arg_types, result_types = snapshot[0]
    return (lowered or Lowered)(mesh, arg_names, arg_types, result_types, manager.stages,
                                global_stage, module, collectives, backend, donated, outputs,
                                inputs)


Number = bool | int | float | complex
_NUMBERS = (bool, int, float, complex)
_CALL_LEAVES = frozenset((np.ndarray, DTensor, *_NUMBERS))
"""Python numbers (these exact types, not numpy's scalars): an argument of one of them is a
constant of the program."""


@dataclass(frozen=True)
class _Constant:
    """A Python number passed as an argument: traced as the number itself, so numpy's weak
    typing applies (``x * s`` with ``s = 2.0`` keeps x's float32); each value is a program of
    its own. Equal only to the same number of the same type (``1 != 1.0 != True`` here), a
    float by its bits (``0.0 != -0.0``: ``x / s`` differs)."""

    value: Number

    def _key(self) -> tuple[type, object]:
        value = self.value
        if type(value) is float:  # by its bits: 0.0 is not -0.0, a NaN is itself
            return float, struct.pack("<d", value)
        if type(value) is complex:
            return complex, struct.pack("<dd", value.real, value.imag)
        return type(value), value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Constant) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())


def _tree_of(name: str, value: object) -> tuple[list[object], list[str], OutputTree]:
    """The leaves of an argument, their paths, and its structure (dicts, lists and tuples
    are containers)."""
    if not isinstance(value, (dict, list, tuple)):
        return [value], [""], LEAF
    try:
        return flatten_with_paths(value)
    except TypeError as e:
        raise TraceError(f"argument {name!r} holds {e}") from None


def _leaf_layouts(name: str, layout: object, leaves: Sequence[object], tree: OutputTree
                  ) -> list[Layout | None]:
    """The in_layouts entry of an argument, per leaf: None (all free), one Layout (for an
    array; for a dict, list or tuple, for each array in it), or nested like the argument."""
    if layout is None or isinstance(layout, Layout):
        if tree is LEAF:
            return [layout]
        return [None if type(leaf) in _NUMBERS else layout for leaf in leaves]
    if tree is LEAF:
        raise LayoutError(f"in_layouts for argument {name!r} is nested, but the argument is "
                          "not a dict, list or tuple: give it a Layout or None")
    layouts, given = flatten(layout, _is_layout_leaf)
    if given is LEAF or not tree.matches(given):
        raise LayoutError(f"in_layouts for argument {name!r} is {given.text()}, but the "
                          f"argument is {tree.text()}: give None, one Layout for all its "
                          "arrays, or a Layout or None per array nested the same way")
    return cast(list[Layout | None], layouts)


def _holds_traced(args: Sequence[object]) -> bool:
    """Whether a traced array is among `args` or in the dicts, lists and tuples they hold
    (not: when they do not flatten, which `_resolve` reports)."""
    try:
        leaves, _ = flatten(list(args))
    except TypeError:
        return False
    return any(tracing.is_traced(leaf) for leaf in leaves)


def _is_call_leaf(v: object) -> bool:
    """Whether `_call_key` knows what `v` makes of the program (else it is resolved)."""
    return type(v) in _CALL_LEAVES


def _is_layout_leaf(v: object) -> bool:
    return v is None or isinstance(v, Layout)


def _layout_leaves(entry: object) -> list[Layout | None]:
    """The layouts in one (normalized) in_layouts entry."""
    return cast(list[Layout | None], flatten(entry, _is_layout_leaf)[0])


def _argument(name: str, value: object, layout: Layout | None, mesh: Mesh
              ) -> tuple[TensorType, object]:
    """The type of one argument (sharding pinned when known) and its value for `run`."""
    if isinstance(value, DistributedValue):
        tensor = value.as_dtensor()
        if tensor.layout.is_parted():
            raise LayoutError(f"argument {name!r} is parted ({tensor.layout.short_text()}); "
                              "compiled functions take static layouts: relayout it to one "
                              "first")
        if tensor.mesh != mesh:
            raise LayoutError(f"argument {name!r} is on {tensor.mesh.short_text()}, the "
                              f"function runs on {mesh.short_text()}")
        if layout is not None and tensor.layout != layout:
            raise LayoutError(f"argument {name!r} has layout {tensor.layout.short_text()}, "
                              f"in_layouts gives {layout.short_text()}; relayout it first")
        return TensorType(dtype_name(tensor.dtype), tensor.shape, tensor.layout.sharding), tensor
    if isinstance(value, TensorSpec):
        shape, dtype = value.shape, value.dtype
    else:
        value = native_array(value)
        shape, dtype = value.shape, value.dtype
    try:
        dtype_text = dtype_name(dtype)
    except TypeError as e:
        raise TraceError(f"argument {name!r} must be a numeric array, DTensor or TensorSpec: "
                         f"{e}") from None
    if layout is None:
        return TensorType(dtype_text, shape), value
    layout = layout.for_rank(len(shape))
    problems = layout.sharding.problems(mesh.mesh_shape(), shape)
    if problems:
        raise LayoutError(f"argument {name!r} of shape {list(shape)} does not fit its layout "
                          f"{layout.short_text()}: {'; '.join(problems)}")
    return TensorType(dtype_text, shape, layout.sharding), value


def compile(fn: Callable[..., Any] | None = None, *,
            in_layouts: Layout | Sequence[Layout | None] | None = None,
            out_layouts: Layout | Sequence[object] | Mapping[object, object] | None = None,
            backend: str | None = None, pipeline: str | None = None,
            cost_model: CostModel | None = None, verify: bool = False,
            specs: Sequence[TensorSpec] | None = None, keep_ir: bool = True,
            donate_argnums: int | Sequence[int] = ()
            ) -> CompiledFunction | Callable[[Callable[..., Any]], CompiledFunction]:
    """Compile `fn` for the simulated mesh: ``@compile``, ``@compile(in_layouts=...)`` or
    ``compile(fn, in_layouts=...)``.

    `backend`: ``numpy`` (the simulated mesh) or ``distributed`` (this client's devices of a
    multi-client mesh, collectives over torch.distributed); None picks ``distributed`` for a
    mesh other clients hold devices of (`create_distributed_mesh`), else ``numpy``.
    `in_layouts`: a Layout per positional argument (None: from the DTensor argument, or chosen
    by propagation), or one Layout for a one-argument function; for an argument that is a
    dict, list or tuple, one Layout for all its arrays or its layouts nested like it.
    `out_layouts`: likewise per returned array, flat or nested like the returned tuples, lists
    and dicts (results come back in the structure the function returned them in).
    `pipeline`: pass pipeline text (default `DEFAULT_PIPELINE`). `verify`: verify the IR after
    every pass (slower; tests turn it on).
    `specs`: example argument types, kept as `CompiledFunction.specs` for tools that lower
    without arguments (the CLI). `keep_ir`: keep the printed IR of every stage for `Lowered.ir`
    (printing costs time on big models).
    `donate_argnums`: positions of arguments the call takes over, as in JAX: a result may be
    written into a donated argument's buffer (a training step updating its parameters in
    place), and a donated DTensor or DVariable raises `DonatedError` when read again until
    it is assigned a new value.
    """
    def wrap(f: Callable[..., Any]) -> CompiledFunction:
        return CompiledFunction(f, in_layouts, out_layouts, backend, pipeline, cost_model,
                                verify, specs, keep_ir, donate_argnums)
    return wrap if fn is None else wrap(fn)
