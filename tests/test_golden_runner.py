"""The golden runner itself: RUN lines, exact-match blocks, and what --update-golden touches."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from golden_runner import (
    EXPECTED_MARKER,
    GoldenFailure,
    expected_output,
    parse_run_line,
    run_golden,
)

TESTS = Path(__file__).parent
IR = """mesh<x=2>
func @f(%a: f32[4] @ {x}) -> (f32[4] @ {x}) {
  %0 = tanh %a : f32[4] @ {x}
  return %0
}
"""
EXACT = "// RUN: dtc opt %s | diff-golden %s\n" + IR
FILECHECK = "// RUN: dtc opt %s | filecheck %s\n// CHECK: %0 = exp %a\n" + IR


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_parse_run_line() -> None:
    run = parse_run_line(" not dtc opt %s -p 'a,b{c=1}' 2>&1 | filecheck %s --check-prefix=X",
                         Path("g.dtir"))
    assert run.negated and run.merge_stderr
    assert run.dtc_args == ("opt", "g.dtir", "-p", "a,b{c=1}")
    assert run.check == ("filecheck", "--check-prefix=X")


def test_unknown_stage_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path / "g.dtir", "// RUN: dtc opt %s | sort\n" + IR)
    with pytest.raises(GoldenFailure, match="unknown RUN stage 'sort'"):
        run_golden(path)


def test_update_writes_the_block_and_the_check_passes(tmp_path: Path) -> None:
    path = write(tmp_path / "g.dtir", EXACT)
    with pytest.raises(GoldenFailure, match="no // EXPECTED: block"):
        run_golden(path)
    run_golden(path, update=True)
    assert path.read_text().startswith(EXACT)
    assert expected_output(path) == IR
    assert f"\n{EXPECTED_MARKER}\n// mesh<x=2>\n" in path.read_text()
    run_golden(path)


def test_stale_block_fails_with_a_diff(tmp_path: Path) -> None:
    path = write(tmp_path / "g.dtir", EXACT + EXPECTED_MARKER + "\n// mesh<x=4>\n")
    with pytest.raises(GoldenFailure, match=r"(?s)-mesh<x=4>.*\+mesh<x=2>"):
        run_golden(path)


def test_filecheck_mismatch_fails(tmp_path: Path) -> None:
    path = write(tmp_path / "g.dtir", FILECHECK)
    with pytest.raises(GoldenFailure, match="Couldn't match \"%0 = exp %a\""):
        run_golden(path)


def test_not_needs_a_failure(tmp_path: Path) -> None:
    path = write(tmp_path / "g.dtir", "// RUN: not dtc opt %s\n" + IR)
    with pytest.raises(GoldenFailure, match="expected dtc to fail"):
        run_golden(path)


def test_pytest_update_golden_rewrites_only_exact_blocks(tmp_path: Path) -> None:
    """End to end through pytest: the flag fixes the stale exact golden, leaves the FileCheck
    golden byte for byte alone, and that one still fails."""
    for helper in ("conftest.py", "golden_runner.py", "effect_ops.py"):
        shutil.copy(TESTS / helper, tmp_path / helper)
    exact = write(tmp_path / "golden" / "t" / "exact.dtir",
                  EXACT + EXPECTED_MARKER + "\n// stale\n")
    check = write(tmp_path / "golden" / "t" / "check.dtir", FILECHECK)
    cmd = [sys.executable, "-m", "pytest", str(tmp_path), "-q", "-p", "no:cacheprovider",
           "--rootdir", str(tmp_path), "--update-golden"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert "1 failed, 1 passed" in done.stdout, done.stdout + done.stderr
    assert "check.dtir" in done.stdout
    assert expected_output(exact) == IR
    assert check.read_text() == FILECHECK
