"""The exception hierarchy. Every user-facing error is a `DTensorError`.

Errors that concern user code carry a `Location` (file and line of the traced numpy code) and
print it; errors that concern IR text carry the line and column and the offending line.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Location:
    """Where an op came from: the user's source file and line.

    The tracer records `file` as `source_path` gives it, so printed IR and messages do not
    depend on the working directory.
    """

    file: str
    line: int
    call: str | None = field(default=None, compare=False)
    """The numpy function the user called there (``mean``), when the op is part of one; only
    messages use it (the IR text keeps file and line)."""

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


_PROJECT_MARKERS = ("pyproject.toml", "setup.py", "setup.cfg", ".git")


@functools.lru_cache(maxsize=256)
def source_path(file: str) -> str:
    """How a source file is named in IR and messages: relative to the directory that holds
    its top-level package (``mypkg/models/mlp.py``), else to the nearest enclosing project
    (a directory with ``pyproject.toml``, ``setup.py``, ``setup.cfg`` or ``.git``), else the
    path as given. A relative path (a script run as ``python examples/mlp.py``) is kept."""
    if not os.path.isabs(file):
        return file
    directory = os.path.dirname(file)
    top = None
    while os.path.isfile(os.path.join(directory, "__init__.py")):
        top = directory
        directory = os.path.dirname(directory)
    if top is not None:
        return os.path.relpath(file, os.path.dirname(top))
    directory = os.path.dirname(file)
    while True:
        if any(os.path.exists(os.path.join(directory, m)) for m in _PROJECT_MARKERS):
            return os.path.relpath(file, directory)
        parent = os.path.dirname(directory)
        if parent == directory:
            return file
        directory = parent


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none): what a
    message of ours quotes of a dependency's multi-line error."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


class DTensorError(Exception):
    """Base class of every error raised by dtensor_compiler."""


class EagerOnlyError(DTensorError, RuntimeError):
    """A function that works on DTensors' components (`pack`, `unpack`, `fetch_layout`) was
    called inside a compiled function, where there are no components yet."""


class DonatedError(DTensorError, RuntimeError):
    """A DTensor was read after it was donated to a compiled function (`donate_argnums`),
    which may have written its result into the DTensor's buffer."""


class MeshError(DTensorError, ValueError):
    """A malformed mesh: bad dim names, sizes or device ids."""


class LayoutError(DTensorError, ValueError):
    """A layout that does not fit its mesh or its tensor."""


class TraceError(DTensorError):
    """Something in the traced numpy function cannot be compiled. Names the user's line."""

    def __init__(self, message: str, loc: Location | None = None) -> None:
        self.loc = loc
        self.message = message
        super().__init__(f"{loc}: {message}" if loc is not None else message)


class UnsupportedOperationError(TraceError, NotImplementedError):
    """The traced code called a numpy function or method the tracer does not support."""


class GradientError(TraceError, TypeError):
    """`dtc.grad` of something without a derivative: a non-scalar or integer output, an
    integer input, or an op without a derivative rule (named, at the user's line)."""


class ShapeError(TraceError, ValueError):
    """Operand shapes or dtypes do not fit the operation."""


class IRParseError(DTensorError, ValueError):
    """IR text that does not parse. Carries line, column and the offending line."""

    def __init__(self, message: str, line: int, column: int, context: str) -> None:
        self.line = line
        self.column = column
        self.context = context
        pointer = " " * max(column - 1, 0) + "^"
        super().__init__(f"line {line}, column {column}: {message}\n  {context}\n  {pointer}")


class VerificationError(DTensorError):
    """IR that breaks an invariant (SSA, shapes, dtypes, layouts). Shows the IR around it;
    `source` is the line and column of the broken op in the IR text it was parsed from, if
    it was."""

    def __init__(self, message: str, source: tuple[int, int] | None = None) -> None:
        super().__init__(message)
        self.source = source


class PassError(DTensorError, ValueError):
    """A bad pipeline: unknown pass, bad option, or a pass that failed."""


class PlanningError(DTensorError):
    """No relayout plan exists between two layouts (for example a non-divisible shard)."""


class CheckpointError(DTensorError):
    """A missing, corrupt or mismatching checkpoint."""


class SliceSpecError(DTensorError, ValueError):
    """A malformed ``shape_and_slices`` string of `sharded_save` (see `ir/slice_spec.py`)."""


class MultiClientError(DTensorError, RuntimeError):
    """The clients of a multi-client runtime could not work together: one never joined, its
    coordinator port is taken, a barrier timed out, a peer died (naming the clients)."""


class NotLocalError(DTensorError, ValueError):
    """A value asked for whole (``np.asarray``, ``.numpy()``) that other clients hold parts
    of: gather it explicitly first (`relayout` to a layout replicated over their mesh dims)."""
