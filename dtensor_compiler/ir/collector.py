"""Pausing Python's cyclic garbage collector around work that builds a large, long-lived graph.

Tracing, planning and parsing allocate hundreds of thousands of small objects that mostly live
as long as the program they build. The cyclic collector would scan them again and again and
find nothing to free (a third of planning a 200-layer model, a third of parsing its IR), so
it waits until the work is done; reference counting frees everything else as usual.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Disable the cyclic garbage collector for the block (re-enabled after it if it was)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
