"""The progress bar of a save or restore: tqdm, on a terminal, for more than 256 MiB.

`progress=None` (the default of every save and restore) shows the bar when the data is over
`THRESHOLD` bytes, stderr is a terminal, tqdm is installed and the environment variable
``DTC_PROGRESS`` is not ``0``; `progress=False` never shows it, `progress=True` always does
(tqdm permitting).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

from dtensor_compiler.runtime.checkpoint_data import reporting

THRESHOLD = 256 << 20
ENV = "DTC_PROGRESS"


def wanted(progress: bool | None, nbytes: int) -> bool:
    if progress is not None:
        return progress
    return (nbytes > THRESHOLD and os.environ.get(ENV, "1") != "0"
            and sys.stderr is not None and sys.stderr.isatty())


@contextlib.contextmanager
def bar(what: str, nbytes: int, progress: bool | None) -> Iterator[None]:
    """Show a bar of `nbytes` while the block writes or reads checkpoint data, if wanted."""
    if not wanted(progress, nbytes):
        yield
        return
    try:
        from tqdm import tqdm
    except ImportError:
        yield
        return
    with tqdm(total=nbytes, desc=what, unit="B", unit_scale=True, unit_divisor=1024,
              leave=False) as shown:
        def advance(n: int) -> None:
            shown.update(n)
        with reporting(advance):
            yield
