"""print → parse → print is the identity on every golden file: on its input, and on the IR
each of its RUN lines prints (so every stage of every pipeline in the suite round-trips)."""

from __future__ import annotations

from pathlib import Path

import pytest
from golden_runner import GOLDEN_DIR, is_negative, run_dtc, run_lines

from dtensor_compiler.ir.parser import parse_module
from dtensor_compiler.ir.printer import print_module

POSITIVE = [p for p in sorted(GOLDEN_DIR.rglob("*.dtir")) if not is_negative(p)]


def _id(path: Path) -> str:
    return str(path.relative_to(GOLDEN_DIR))


def assert_round_trips(text: str) -> None:
    printed = print_module(parse_module(text))
    assert print_module(parse_module(printed)) == printed


@pytest.mark.parametrize("path", POSITIVE, ids=_id)
def test_input_round_trips(path: Path) -> None:
    assert_round_trips(path.read_text())


@pytest.mark.parametrize("path", POSITIVE, ids=_id)
def test_output_round_trips(path: Path) -> None:
    for run in run_lines(path):
        status, stdout, stderr = run_dtc(run.dtc_args)
        assert status == 0, stderr
        if run.dtc_args[:1] == ("opt",):
            locations = "--locations" in run.dtc_args
            assert print_module(parse_module(stdout), locations=locations) == stdout
