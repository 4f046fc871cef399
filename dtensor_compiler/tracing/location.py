"""The user's source location: the innermost stack frame outside this package and numpy."""

from __future__ import annotations

import functools
import os
import sys
from types import FrameType

import numpy as np

from dtensor_compiler.errors import Location, source_path

_INTERNAL_DIRS: tuple[str, ...] = (
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep,
    os.path.dirname(os.path.abspath(np.__file__)) + os.sep,
)
"""Frames in these directories (dtensor_compiler itself, numpy's Python layer) are skipped."""


@functools.cache
def _is_internal(file: str) -> bool:
    return os.path.abspath(file).startswith(_INTERNAL_DIRS)


def user_location(call: str | None = None) -> Location:
    """File and line of the innermost caller that is user code (where it called `call`)."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if not _is_internal(frame.f_code.co_filename):
            return Location(source_path(frame.f_code.co_filename), frame.f_lineno, call)
        frame = frame.f_back
    return Location("<unknown>", 0)
