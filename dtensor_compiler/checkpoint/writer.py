"""Running saves: one background writer per process, so saves land in the order they were
made, and the handle an asynchronous save returns.

Every save, blocking or not, is planned in the caller's thread and run by the writer thread;
a blocking save waits for its own result, so a save waits for every save made before it.
A save holds the DTensors it writes, not copies: DTensors are immutable (assigning a
DVariable replaces its DTensor), so values changed after the call cannot reach the files.
Restores, and compiled functions that save (``dtc.save`` inside), wait for the saves in
flight first, so every process runs its checkpoint programs in the order they were made
(on a mesh several processes hold, they meet at each save's barriers in that order). The
writer thread is joined when the interpreter exits, so a pending save still lands.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from dtensor_compiler.runtime.checkpoint_index import wait_for_cleanup

_POOL: ThreadPoolExecutor | None = None
_LOCK = threading.Lock()
_PENDING: list[Future[str]] = []


def _pool() -> ThreadPoolExecutor:
    global _POOL
    with _LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(1, thread_name_prefix="dtc-checkpoint-writer")
        return _POOL


class SaveHandle:
    """A save in flight (``blocking=False``): `result()` waits for it and gives the
    checkpoint's path, or raises what the save raised."""

    def __init__(self, future: Future[str], prefix: str) -> None:
        self._future = future
        self.prefix = prefix

    def result(self, timeout: float | None = None) -> str:
        """The saved path, once the checkpoint is committed; TimeoutError after `timeout`
        seconds."""
        return self._future.result(timeout)

    def done(self) -> bool:
        """Whether the save has finished, committed or failed."""
        return self._future.done()

    def __repr__(self) -> str:
        state = "done" if self.done() else "running"
        return f"SaveHandle({self.prefix!r}, {state})"


_IN_WRITER = threading.local()


def in_writer_thread() -> bool:
    """Whether the caller is the writer thread, running a save."""
    return bool(getattr(_IN_WRITER, "yes", False))


def submit(prefix: str, run: Callable[[], None]) -> SaveHandle:
    """Queue `run` (which writes the checkpoint `prefix`) behind the saves in flight."""
    context = contextvars.copy_context()

    def job() -> str:
        _IN_WRITER.yes = True
        try:
            context.run(run)
        finally:
            _IN_WRITER.yes = False
        return prefix

    future = _pool().submit(job)
    with _LOCK:
        _PENDING[:] = [f for f in _PENDING if not f.done()] + [future]
    return SaveHandle(future, prefix)


def wait_for_saves() -> None:
    """Wait until every save made so far has finished (its errors stay with its handle) and
    the files it replaced are gone."""
    with _LOCK:
        pending = list(_PENDING)
    for f in pending:
        f.exception()
    wait_for_cleanup()
