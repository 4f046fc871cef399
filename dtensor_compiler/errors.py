"""The exception hierarchy. Every user-facing error is a `DTensorError`.

Errors that concern user code carry a `Location` (file and line of the traced numpy code) and
print it; errors that concern IR text carry the line and column and the offending line.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Location:
    """Where an op came from: the user's source file and line."""

    file: str
    line: int

    def __str__(self) -> str:
        """``file:line``, the file relative to the working directory when it lies below it."""
        return f"{_display_path(self.file, os.getcwd())}:{self.line}"


@functools.lru_cache(maxsize=256)
def _display_path(file: str, cwd: str) -> str:
    if os.path.isabs(file):
        rel = os.path.relpath(file, cwd)
        if not rel.startswith(".."):
            return rel
    return file


class DTensorError(Exception):
    """Base class of every error raised by dtensor_compiler."""


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
    """IR that breaks an invariant (SSA, shapes, dtypes, layouts). Shows the IR around it."""


class PassError(DTensorError, ValueError):
    """A bad pipeline: unknown pass, bad option, or a pass that failed."""


class PlanningError(DTensorError):
    """No relayout plan exists between two layouts (for example a non-divisible shard)."""


class CheckpointError(DTensorError):
    """A missing, corrupt or mismatching checkpoint."""
