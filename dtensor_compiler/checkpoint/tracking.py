"""`DTensorCheckpoint`: object-based checkpoints of the DVariables an object graph holds.

What is tracked: the keyword arguments (and, with `root`, that object's attributes as they are
at each save or restore), and below each, recursively, dict values, list and tuple items and
object attributes. A `DVariable` is saved under its path from the checkpoint, keys joined by
``/`` (``model/layers/0/w``); a variable reachable by two paths is saved once, under the first
in the order the walk meets them (root's attributes, then the arguments as given, then
insertion order). Values that are neither DVariables nor containers of them are not tracked.

`save(prefix)` adds one to `save_counter` (itself saved, as ``save_counter``), writes the
checkpoint ``prefix-N`` and records it in the state file ``checkpoint`` of its directory, which
`latest_checkpoint` reads. `write(prefix)` writes exactly `prefix`, without the counter; `read`
restores without expecting it; `restore` restores it too.

Deferred restore: the values of a restore that no tracked variable takes yet are kept, and a
variable attached later takes its value when it is attached to the checkpoint itself
(``ckpt.layer = obj``), to an `AutoTrackable` root, or to an `AutoTrackable` object that the
checkpoint has already walked (``model.head = Head()``, with ``Model(dtc.AutoTrackable)``);
`LoadStatus.run_restore_ops()` applies them to whatever is attached by other means. They are
read then, from the checkpoint as it was restored: if its prefix has been saved again since,
a CheckpointError says so (nothing of another generation is ever mixed in). The load status
is live: its assertions look at the objects as they are when called. The name
``save_counter`` is the checkpoint's own: a variable tracked under it is refused.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import types
import weakref
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from dtensor_compiler.checkpoint import writer
from dtensor_compiler.checkpoint.name_based import (
    PathLike,
    as_prefix,
    run_restore,
    run_save,
)
from dtensor_compiler.checkpoint.programs import CheckpointProgram, SaveEntry, lower_save
from dtensor_compiler.compile import CompiledFunction
from dtensor_compiler.dtensor import DTensor
from dtensor_compiler.errors import CheckpointError
from dtensor_compiler.layout import Layout
from dtensor_compiler.mesh import Mesh
from dtensor_compiler.runtime.checkpoint_index import load_index, write_durably
from dtensor_compiler.variable import DVariable

STATE_FILE = "checkpoint"
COUNTER = "save_counter"


class AutoTrackable:
    """A base class for objects whose attribute assignments a checkpoint notices: a DVariable
    assigned (directly or inside a container) after a restore takes its restored value."""

    def __setattr__(self, name: str, value: object) -> None:
        object.__setattr__(self, name, value)
        for ckpt, path in list(_attached_at(self)):
            ckpt._attach(f"{path}/{name}" if path else name, value)  # ("": a root)


_ATTACHED: weakref.WeakKeyDictionary[object, list[tuple[weakref.ref[DTensorCheckpoint],
                                                          str]]] = weakref.WeakKeyDictionary()


def _attached_at(obj: object) -> Iterator[tuple[DTensorCheckpoint, str]]:
    for ref, path in _ATTACHED.get(obj, []):
        ckpt = ref()
        if ckpt is not None:
            yield ckpt, path


def _children(obj: object) -> list[tuple[str, object]]:
    if isinstance(obj, Mapping):
        return [(str(k), v) for k, v in obj.items()]
    if isinstance(obj, (list, tuple)):
        return [(str(i), v) for i, v in enumerate(obj)]
    attrs = getattr(obj, "__dict__", None)
    if isinstance(attrs, dict):
        return [(k, v) for k, v in attrs.items() if not k.startswith("__")]
    return []


def _walk(roots: Mapping[str, object], ckpt: DTensorCheckpoint,
          root: object | None = None) -> dict[str, DVariable]:
    """The DVariables under `roots` (the children of `root`, if given) by path; every
    `AutoTrackable` met is noted as attached to `ckpt` at its path. ValueError when two
    variables get the same path (``{"a/b": v, "a": {"b": w}}``)."""
    out: dict[str, DVariable] = {}
    seen: set[int] = set() if root is None else {id(root)}
    if isinstance(root, AutoTrackable):
        _note_attached(root, ckpt, "")

    def visit(path: str, obj: object) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, DVariable):
            if path in out:
                raise ValueError(f"two different variables would be saved as {path!r}; "
                                 "rename a key or attribute")
            out[path] = obj
            return
        if isinstance(obj, AutoTrackable):
            _note_attached(obj, ckpt, path)
        for key, child in _children(obj):
            if _trackable(child):
                visit(f"{path}/{key}", child)

    for name, value in roots.items():
        visit(name, value)
    if COUNTER in out:
        raise ValueError(f"a variable is tracked as {COUNTER!r}, which is the checkpoint's own "
                         "counter; rename it")
    return out


def _note_attached(obj: AutoTrackable, ckpt: DTensorCheckpoint, path: str) -> None:
    places = _ATTACHED.setdefault(obj, [])
    if not any(r() is ckpt and p == path for r, p in places):
        places.append((weakref.ref(ckpt), path))


def _trackable(obj: object) -> bool:
    """Whether the checkpoint looks inside `obj`: containers and objects with attributes,
    callable ones too (a model with ``__call__``), but not functions, methods, modules,
    classes or compiled functions."""
    return isinstance(obj, (DVariable, Mapping, list, tuple)) or (
        isinstance(getattr(obj, "__dict__", None), dict)
        and not isinstance(obj, (DTensor, np.ndarray, type, types.ModuleType,
                                 CompiledFunction, functools.partial))
        and not inspect.isroutine(obj))


class DTensorCheckpoint:
    """`DTensorCheckpoint(mesh, root=None, **kwargs)`: saves and restores the DVariables that
    `root` and the keyword arguments hold (see the module docstring)."""

    _mesh: Mesh
    _tracked: dict[str, object]
    """The tracked objects by name: the keyword arguments and what was attached since
    (`root`'s attributes are read from it each time)."""
    _pending: dict[str, tuple[str, int]]
    """Deferred values: checkpoint name -> the prefix and generation of the restore it came
    from."""
    _counter: DVariable | None
    _root: object | None

    def __init__(self, mesh: Mesh, root: object | None = None, **kwargs: object) -> None:
        if not isinstance(mesh, Mesh):
            raise TypeError(f"DTensorCheckpoint needs a Mesh, got {type(mesh).__name__}")
        object.__setattr__(self, "_mesh", mesh)
        object.__setattr__(self, "_tracked", {})
        object.__setattr__(self, "_pending", {})
        object.__setattr__(self, "_counter", None)
        object.__setattr__(self, "_root", root)
        if root is not None:
            if not _trackable(root):
                raise ValueError(f"root must be a trackable object, got {type(root).__name__}")
            for name, value in kwargs.items():
                if hasattr(root, name) and getattr(root, name) is not value:
                    raise ValueError(f"root.{name} and the keyword argument {name!r} are "
                                     "different objects; a checkpoint tracks one per name")
        for name, value in kwargs.items():
            if name == COUNTER:
                raise ValueError(f"{COUNTER!r} is the checkpoint's own counter")
            if not _trackable(value):
                raise ValueError(f"the keyword argument {name!r} is a "
                                 f"{type(value).__name__}, which a checkpoint cannot track: "
                                 "give DVariables, containers of them or objects holding them")
            self._tracked[name] = value

    # -- the tracked graph ---------------------------------------------------------------------
    def __setattr__(self, name: str, value: object) -> None:
        if name.startswith("_") or name == COUNTER or not _trackable(value):
            raise AttributeError(f"cannot set {name!r} on a DTensorCheckpoint: attach "
                                 "DVariables, containers of them or objects holding them "
                                 f"({COUNTER!r} is the checkpoint's own)")
        self._tracked[name] = value
        self._attach(name, value)

    def __getattr__(self, name: str) -> object:
        if name.startswith("_"):  # (its own fields, not yet set: a copy being made)
            raise AttributeError(f"DTensorCheckpoint has no attribute {name!r}")
        tracked = self._roots()
        if name in tracked:
            return tracked[name]
        raise AttributeError(f"DTensorCheckpoint has no attribute {name!r}")

    def _roots(self) -> dict[str, object]:
        """What is tracked by name: `root`'s trackable attributes as they are now, then the
        keyword arguments and what was attached to the checkpoint."""
        roots: dict[str, object] = {}
        if self._root is not None:
            roots.update((k, v) for k, v in _children(self._root) if _trackable(v))
        roots.update(self._tracked)
        return roots

    def variables(self) -> dict[str, DVariable]:
        """Every tracked DVariable by its checkpoint name, in walk order."""
        return _walk(self._roots(), self, self._root)

    @property
    def save_counter(self) -> DVariable:
        """The number of `save` calls this checkpoint's values have seen (restored with it):
        a replicated int64 DVariable, made on first use."""
        if self._counter is None:
            object.__setattr__(self, "_counter", DVariable(
                np.int64(0), Layout.replicated(self._mesh, 0), name=COUNTER))
        counter = self._counter
        assert isinstance(counter, DVariable)
        return counter

    # -- saving --------------------------------------------------------------------------------
    def _entries(self, with_counter: bool) -> list[SaveEntry]:
        variables = self.variables()
        if with_counter:
            variables = {**variables, COUNTER: self.save_counter}
        self._check_meshes(variables)
        return [SaveEntry(name, v.read_value(), as_bf16=v.save_as_bf16)
                for name, v in variables.items()]

    def save(self, file_prefix: PathLike, *, blocking: bool = True,
             progress: bool | None = None) -> str | writer.SaveHandle:
        """Write ``{file_prefix}-{N}`` with N the new `save_counter`, record it in the state
        file, and give its path (or, with `blocking=False`, a `SaveHandle` whose `result()`
        gives it). A save the call refuses (a variable on another mesh, a dtype safetensors
        cannot store, a write that fails) leaves `save_counter` as it was."""
        prefix = as_prefix(file_prefix, "DTensorCheckpoint.save")
        counter = self.save_counter
        number = int(counter.numpy()) + 1
        counter.assign(np.int64(number))
        path = f"{prefix}-{number}"
        try:
            handle = run_save(self._mesh, path, self._entries(True), blocking, progress,
                              then=lambda: _record_state(path))
        except BaseException:
            counter.assign(np.int64(number - 1))
            raise
        return path if handle is None else handle

    def write(self, file_prefix: PathLike, *, blocking: bool = True,
              progress: bool | None = None) -> str | writer.SaveHandle:
        """Write exactly `file_prefix`, without the counter or the state file."""
        prefix = as_prefix(file_prefix, "DTensorCheckpoint.write")
        handle = run_save(self._mesh, prefix, self._entries(False), blocking, progress)
        return prefix if handle is None else handle

    def lower_save(self, file_prefix: PathLike) -> CheckpointProgram:
        """The program `write(file_prefix)` runs, planned and not run."""
        prefix = as_prefix(file_prefix, "DTensorCheckpoint.lower_save")
        return lower_save(self._mesh, prefix, self._entries(False))

    # -- restoring -----------------------------------------------------------------------------
    def restore(self, save_path: PathLike | None, *, progress: bool | None = None
                ) -> LoadStatus:
        """Restore every tracked variable the checkpoint has (and `save_counter`); keep the
        other values for variables attached later. None restores nothing."""
        return self._restore(save_path, True, progress)

    def read(self, save_path: PathLike, *, progress: bool | None = None) -> LoadStatus:
        """Like `restore`, for a checkpoint made by `write` (no counter expected)."""
        return self._restore(save_path, False, progress)

    def _restore(self, save_path: PathLike | None, with_counter: bool,
                 progress: bool | None) -> LoadStatus:
        if save_path is None:
            return LoadStatus(self, frozenset())
        prefix = as_prefix(save_path, "DTensorCheckpoint.restore")
        writer.wait_for_saves()
        index = load_index(prefix)
        stored = frozenset(index.tensors)
        variables = self.variables()
        if with_counter and COUNTER in stored:
            variables[COUNTER] = self.save_counter
        present = {n: v for n, v in variables.items() if n in stored}
        self._check_meshes(present)
        templates = {n: v.read_value() for n, v in present.items()}
        for name, value in run_restore(self._mesh, prefix, templates, progress).items():
            present[name].assign(value)
        self._pending.clear()
        for name in stored - set(present) - {COUNTER}:
            self._pending[name] = (prefix, index.generation)
        return LoadStatus(self, stored - {COUNTER})

    def _check_meshes(self, variables: Mapping[str, DVariable]) -> None:
        for name, v in variables.items():
            if v.mesh != self._mesh:
                raise ValueError(f"{name} is on {v.mesh.short_text()}, the checkpoint on "
                                 f"{self._mesh.short_text()}")

    def _attach(self, path: str, value: object) -> None:
        """Give the variables of a `value` newly attached at `path` their pending restored
        values."""
        if _trackable(value):
            found = _walk({path: value}, self)
            if self._pending:
                self._apply_pending(found)

    def _apply_pending(self, variables: Mapping[str, DVariable]) -> None:
        by_prefix: dict[tuple[str, int], dict[str, DVariable]] = {}
        for name, v in variables.items():
            if name in self._pending:
                by_prefix.setdefault(self._pending[name], {})[name] = v
        for (prefix, generation), group in by_prefix.items():
            self._check_meshes(group)
            writer.wait_for_saves()
            now = load_index(prefix).generation
            if now != generation:
                raise CheckpointError(
                    f"{prefix} has been saved again since it was restored (generation "
                    f"{generation}, now {now}): the values kept for {', '.join(sorted(group))} "
                    "are gone; restore it again")
            restored = run_restore(self._mesh, prefix,
                                   {n: v.read_value() for n, v in group.items()}, None)
            for name, value in restored.items():
                group[name].assign(value)
                del self._pending[name]


class LoadStatus:
    """What a restore matched. Each assertion raises AssertionError naming what did not
    match, and returns the status otherwise."""

    def __init__(self, ckpt: DTensorCheckpoint, stored: frozenset[str]) -> None:
        self._ckpt = ckpt
        self._stored = stored

    def _unmatched(self) -> tuple[list[str], list[str]]:
        variables = self._ckpt.variables()
        unused = sorted(n for n in self._stored if n not in variables)
        missing = sorted(n for n in variables if n not in self._stored)
        return unused, missing

    def assert_consumed(self) -> LoadStatus:
        """Every value of the checkpoint went to a variable, and every variable got one."""
        unused, missing = self._unmatched()
        if unused or missing:
            parts = []
            if unused:
                parts.append("checkpoint values no variable took: " + ", ".join(unused))
            if missing:
                parts.append("variables the checkpoint has no value for: " + ", ".join(missing))
            raise AssertionError("the restore was not consumed: " + "; ".join(parts))
        return self

    def assert_existing_objects_matched(self) -> LoadStatus:
        """Every tracked variable got a value (the checkpoint may hold more)."""
        _, missing = self._unmatched()
        if missing:
            raise AssertionError("variables the checkpoint has no value for: "
                                 + ", ".join(missing))
        return self

    def assert_nontrivial_match(self) -> LoadStatus:
        """At least one tracked variable (besides the counter) got a value."""
        variables = self._ckpt.variables()
        if not any(n in self._stored for n in variables):
            raise AssertionError("no tracked variable matched a value of the checkpoint (it "
                                 "holds " + (", ".join(sorted(self._stored)) or "nothing") + ")")
        return self

    def expect_partial(self) -> LoadStatus:
        """Say that values left unused are expected (there is nothing to silence here: a
        restore never warns); kept for the reference's API."""
        return self

    def run_restore_ops(self) -> None:
        """Apply the deferred values to variables attached since the restore by means the
        checkpoint could not notice."""
        self._ckpt._apply_pending(self._ckpt.variables())

    initialize_or_restore = run_restore_ops


def _record_state(path: str) -> None:
    """Make `path` the latest checkpoint in the state file of its directory."""
    directory = Path(path).parent
    state = directory / STATE_FILE
    entries = _read_state(directory)
    name = Path(path).name
    entries = [e for e in entries if e != name and (directory / (e + ".index.json")).exists()]
    entries.append(name)
    write_durably(state, (json.dumps({"latest": name, "all": entries}, indent=1) + "\n").encode())


def _read_state(directory: Path) -> list[str]:
    state = directory / STATE_FILE
    try:
        doc = json.loads(state.read_text(encoding="utf-8"))
        entries = doc["all"]
        latest = doc["latest"]
        if not all(isinstance(e, str) for e in entries) or not isinstance(latest, str):
            raise TypeError("entries must be strings")
    except FileNotFoundError:
        return []
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"the checkpoint state file {state} is malformed "
                              f"({type(e).__name__}: {e})") from None
    return [e for e in entries if e != latest] + [latest]


def latest_checkpoint(checkpoint_dir: PathLike) -> str | None:
    """The path of the newest checkpoint `DTensorCheckpoint.save` recorded in the directory
    (one whose index is still there), or None."""
    writer.wait_for_saves()
    directory = Path(os.fspath(checkpoint_dir))
    for name in reversed(_read_state(directory)):
        if (directory / (name + ".index.json")).exists():
            return str(directory / name)
    return None
