"""Exit codes of `dtc` and the two errors its subcommands raise besides `DTensorError`.

    0  success
    1  a failed check: IR that does not parse or verify, a program that does not compile,
       a simulated run that differs from numpy
    2  bad usage: unknown flags, a missing file or function, bad --shapes, an unknown pass
       or stage
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """The command line names something that does not exist or cannot be used (exit 2)."""


class CheckFailed(Exception):
    """The input was read but failed a check; the message says where (exit 1)."""
