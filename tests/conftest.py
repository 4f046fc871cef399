"""Shared pytest setup: golden IR files are tests, ``--update-golden`` regenerates them, and the
test-only ops of `effect_ops` are registered. Kernels the triton backend generates go to a
cache directory of the session's own (``DTC_CACHE_DIR``), not the user's, and run in Triton's
interpreter (``TRITON_INTERPRET`` is read when triton is imported, so it is set here).

Every ``tests/golden/**/*.dtir`` file is collected as one test that runs its ``// RUN:`` lines
(see `golden_runner`). ``pytest --update-golden`` rewrites the ``// EXPECTED:`` block of
exact-match goldens from the compiler's current output; FileCheck goldens are never rewritten.
See docs/golden.md.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import effect_ops  # noqa: F401  (registers the test-only ops in every test)
import pytest
from golden_runner import GOLDEN_DIR, GoldenFailure, run_golden

os.environ["DTC_CACHE_DIR"] = tempfile.mkdtemp(prefix="dtc-test-cache-")
if not os.environ.get("CUDA_VISIBLE_DEVICES") and not Path("/dev/nvidia0").exists():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before any test imports triton


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true", default=False,
                     help="rewrite the // EXPECTED: blocks of exact-match golden IR files")


def pytest_collect_file(parent: pytest.Collector, file_path: Path) -> pytest.File | None:
    if file_path.suffix == ".dtir" and GOLDEN_DIR in file_path.parents:
        return GoldenFile.from_parent(parent, path=file_path)
    return None


class GoldenFile(pytest.File):
    def collect(self):
        yield GoldenItem.from_parent(self, name=self.path.stem)


class GoldenItem(pytest.Item):
    """One golden file: passes when all of its RUN lines hold."""

    def runtest(self) -> None:
        run_golden(self.path, update=self.config.getoption("update_golden"))

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style=None) -> str:
        if isinstance(excinfo.value, GoldenFailure):
            return f"{self.path}:\n{excinfo.value}"
        return super().repr_failure(excinfo, style)

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, f"golden {self.path.relative_to(GOLDEN_DIR)}"
