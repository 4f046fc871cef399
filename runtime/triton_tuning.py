"""Autotuning of generated kernels: the fastest launch configuration per shape class, kept on
disk beside the kernel so that a later process tunes nothing.

A kernel's candidates (block sizes, warps) come from its template; when there are several,
the first launch of a *shape class* (the size rounded up to a power of two: programs of one
class want the same blocks) times each candidate once after a warm-up and keeps the fastest
in ``<cache>/tuning/<kernel file stem>.json`` (written atomically, merged with what other
processes wrote). The timer is the CPU's (`time.perf_counter`), after a device
synchronization when the kernel runs on a GPU. `TUNING_RUNS` counts the candidates timed in
this process.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

Config = dict[str, int]
"""Launch parameters: constexpr block sizes and ``num_warps``."""

TUNING_RUNS = 0
"""Candidates timed in this process (0 once every shape class is on disk)."""
_LOCK = threading.Lock()


class Tuner:
    """The tuned configurations of one kernel, by shape class, backed by `path`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._known: dict[str, Config] | None = None

    def _table(self) -> dict[str, Config]:
        if self._known is None:
            try:
                self._known = json.loads(self.path.read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                self._known = {}
        return self._known

    def best(self, shape_class: str, candidates: Sequence[Config],
             launch: Callable[[Config], Any], synchronize: Callable[[], None]) -> Config:
        """The configuration to launch `shape_class` with: the only candidate, the one on
        disk, or the fastest of `candidates` under `launch` (which is then recorded)."""
        if len(candidates) == 1:
            return candidates[0]
        with _LOCK:
            table = self._table()
            if shape_class in table:
                return table[shape_class]
            timings = [(self._time(launch, config, synchronize), n, config)
                       for n, config in enumerate(candidates)]
            best = min(timings, key=lambda t: t[:2])[2]
            self._record(shape_class, best)
            return best

    @staticmethod
    def _time(launch: Callable[[Config], Any], config: Config,
              synchronize: Callable[[], None]) -> float:
        global TUNING_RUNS
        TUNING_RUNS += 1
        launch(config)  # warm-up (compiles on a GPU)
        synchronize()
        start = time.perf_counter()
        launch(config)
        synchronize()
        return time.perf_counter() - start

    def _record(self, shape_class: str, config: Config) -> None:
        table = self._table()
        try:  # another process may have tuned other classes meanwhile
            table = {**json.loads(self.path.read_text()), **table}
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        table[shape_class] = config
        self._known = table
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        temporary.write_text(json.dumps(table, sort_keys=True))
        os.replace(temporary, self.path)


def size_class(n: int) -> int:
    """`n` rounded up to a power of two."""
    return 1 << max(0, n - 1).bit_length()
