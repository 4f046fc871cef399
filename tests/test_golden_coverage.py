"""The golden suite covers what it promises (docs/golden.md): every pass, every collective,
meshes of one to three dims, partial sums, and rejected input, in at least 40 files."""

from __future__ import annotations

import re

from golden_runner import GOLDEN_DIR, is_negative, run_lines

import dtensor_compiler.passes  # noqa: F401  (registers the passes)
from dtensor_compiler.ir import opdef
from dtensor_compiler.pass_manager import registered_passes, split_pipeline

GOLDENS = sorted(GOLDEN_DIR.rglob("*.dtir"))
TOPICS = {"pipeline", "parser", "verifier"}


def _checked_lines(text: str) -> str:
    """The expected output: CHECK directives and the EXPECTED block, not the input."""
    return "\n".join(line for line in text.splitlines() if line.startswith("//"))


def test_size_and_layout() -> None:
    assert len(GOLDENS) >= 40
    dirs = {p.parent.name for p in GOLDENS}
    assert dirs <= set(registered_passes()) | TOPICS, dirs


def _passes_run(args: tuple[str, ...]) -> set[str]:
    if "-p" not in args:
        return set()
    return {p.split("{")[0].strip() for p in split_pipeline(args[args.index("-p") + 1])}


def test_every_pass_runs_in_some_golden_and_has_a_directory() -> None:
    run = set().union(*(_passes_run(r.dtc_args) for p in GOLDENS for r in run_lines(p)))
    assert run == set(registered_passes())
    for name in registered_passes():
        assert (GOLDEN_DIR / name).is_dir(), name


def test_every_collective_is_expected_somewhere() -> None:
    checked = "\n".join(_checked_lines(p.read_text()) for p in GOLDENS if not is_negative(p))
    for kind in (d.name for d in opdef.collectives()):
        assert f" = {kind} %" in checked, kind


def test_meshes_partials_and_negative_cases() -> None:
    texts = [p.read_text() for p in GOLDENS]
    ranks = {len(m.split(",")) for t in texts for m in re.findall(r"^mesh<([^>]*)>", t, re.M)}
    assert {1, 2, 3} <= ranks
    assert sum("partial(" in t for t in texts) >= 10
    negative = [p for p in GOLDENS if is_negative(p)]
    assert {p.parent.name for p in negative} >= {"parser", "verifier"}
