"""Runs the `// RUN:` lines of golden IR files (`tests/golden/**/*.dtir`) in this process.

A RUN line is a small shell-like pipeline:

    // RUN: [not] dtc ARGS... [2>&1] [| CHECKER]

- ``%s`` stands for the golden file's path.
- ``dtc ARGS`` calls `dtensor_compiler.cli.main(ARGS)` here, not in a subprocess, so a golden
  costs milliseconds. Its exit status must be 0, or nonzero after ``not`` (a negative golden).
- ``2>&1`` merges the command's stderr into its output, in the order they are written.
- The CHECKER, if any, is one of:
  ``filecheck %s FLAGS``: the output must match the file's ``// CHECK`` directives, with
  LLVM FileCheck semantics (the `filecheck` package);
  ``diff-golden %s``: the output must equal the block after ``// EXPECTED:`` at the end of
  the file (each line behind ``// ``); ``update=True`` rewrites that block instead. A file
  holds at most one such block.

`GoldenFailure` carries a message meant for the test report.
"""

from __future__ import annotations

import contextlib
import difflib
import io
import shlex
from dataclasses import dataclass
from pathlib import Path

from filecheck.finput import FInput
from filecheck.matcher import Matcher
from filecheck.options import parse_argv_options
from filecheck.parser import Parser

GOLDEN_DIR = Path(__file__).parent / "golden"
RUN_PREFIX = "// RUN:"
EXPECTED_MARKER = "// EXPECTED:"


class GoldenFailure(Exception):
    """A golden file whose RUN lines do not hold."""


@dataclass(frozen=True)
class RunLine:
    """One parsed ``// RUN:`` line."""

    text: str
    negated: bool
    dtc_args: tuple[str, ...]
    merge_stderr: bool
    check: tuple[str, ...] | None
    """What reads the output: ``("filecheck", *flags)``, ``("diff-golden",)`` or nothing."""


def parse_run_line(text: str, path: Path) -> RunLine:
    words = [str(path) if w == "%s" else w for w in shlex.split(text)]
    stages: list[list[str]] = [[]]
    for w in words:
        if w == "|":
            stages.append([])
        else:
            stages[-1].append(w)
    command, *checkers = stages
    negated = command[:1] == ["not"]
    command = command[1:] if negated else command
    merge_stderr = command[-1:] == ["2>&1"]
    command = command[:-1] if merge_stderr else command
    if command[:1] != ["dtc"]:
        raise GoldenFailure(f"RUN line must run dtc: {text}")
    if len(checkers) > 1:
        raise GoldenFailure(f"RUN line has more than one checker: {text}")
    check: tuple[str, ...] | None = None
    if checkers and checkers[0][:1] == ["filecheck"] and str(path) in checkers[0]:
        check = ("filecheck", *(w for w in checkers[0][1:] if w != str(path)))
    elif checkers and checkers[0] == ["diff-golden", str(path)]:
        check = ("diff-golden",)
    elif checkers:
        raise GoldenFailure(f"unknown RUN stage {' '.join(checkers[0])!r} in: {text}")
    return RunLine(text, negated, tuple(command[1:]), merge_stderr, check)


def run_lines(path: Path) -> list[RunLine]:
    lines = [line.strip()[len(RUN_PREFIX):] for line in path.read_text().splitlines()
             if line.strip().startswith(RUN_PREFIX)]
    if not lines:
        raise GoldenFailure(f"{path} has no {RUN_PREFIX} line")
    return [parse_run_line(line, path) for line in lines]


def is_negative(path: Path) -> bool:
    """True for goldens whose command is expected to fail (their input may not parse)."""
    return any(r.negated for r in run_lines(path))


def run_dtc(args: tuple[str, ...], merge_stderr: bool = False) -> tuple[int, str, str]:
    """`dtc ARGS` in this process: (exit status, stdout, stderr). With `merge_stderr` both
    streams go, in the order they are written, to the returned stdout (shell ``2>&1``)."""
    # Imported here, not at the top, so that a broken compiler fails the golden tests
    # instead of the conftest that imports this module (which would stop every test).
    from dtensor_compiler.cli import main as dtc_main

    out = io.StringIO()
    err = out if merge_stderr else io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = dtc_main(list(args))
        except SystemExit as e:  # argparse's way out of bad usage and --help
            status = e.code if isinstance(e.code, int) else 1
    return status, out.getvalue(), "" if merge_stderr else err.getvalue()


def filecheck(check_file: Path, text: str, flags: tuple[str, ...]) -> tuple[int, str]:
    """Match `text` against the CHECK lines of `check_file`: (status, diagnostics).

    Uses the `filecheck` package's matcher directly (its Python API is not documented, so this
    is the one place that knows it); a subprocess per golden would cost ~100 ms each."""
    opts = parse_argv_options(["filecheck", *flags, str(check_file)])
    report = io.StringIO()
    # The matcher binds sys.stderr when it is built; stdout catches a stray debug print.
    with contextlib.redirect_stderr(report), contextlib.redirect_stdout(io.StringIO()):
        matcher = Matcher(opts, FInput("<dtc output>", text), Parser.from_opts(opts))
        status = matcher.run()
    return status, report.getvalue()


def expected_output(path: Path) -> str | None:
    """The output stored after `EXPECTED_MARKER`, or None if the file has no such block."""
    lines = path.read_text().split("\n")
    if EXPECTED_MARKER not in lines:
        return None
    block = lines[lines.index(EXPECTED_MARKER) + 1:]
    while block and block[-1] == "":
        block.pop()
    return "".join(line[3:] + "\n" if line.startswith("// ") else "\n" for line in block)


def write_expected_output(path: Path, output: str) -> None:
    """Replace (or append) the `EXPECTED_MARKER` block of `path` with `output`."""
    lines = path.read_text().split("\n")
    body = lines[:lines.index(EXPECTED_MARKER)] if EXPECTED_MARKER in lines else lines
    while body and body[-1] == "":
        body.pop()
    block = [f"// {line}" if line else "//" for line in output.rstrip("\n").split("\n")]
    path.write_text("\n".join(body + [EXPECTED_MARKER] + block) + "\n")


def _check_status(run: RunLine, status: int, stderr: str) -> None:
    if run.negated and status == 0:
        raise GoldenFailure(f"expected dtc to fail, it succeeded\nRUN:{run.text}")
    if not run.negated and status != 0:
        raise GoldenFailure(f"dtc exited with status {status}\nRUN:{run.text}\n{stderr}")


def _diff_golden(path: Path, output: str, update: bool) -> None:
    if update:
        write_expected_output(path, output)
        return
    expected = expected_output(path)
    if expected is None:
        raise GoldenFailure(f"{path} has no {EXPECTED_MARKER} block; create it with "
                            "pytest --update-golden and review it")
    if output != expected:
        diff = difflib.unified_diff(expected.splitlines(), output.splitlines(), "expected",
                                    "actual", lineterm="")
        raise GoldenFailure("output differs from the golden (accept with pytest "
                            "--update-golden, then review the diff):\n" + "\n".join(diff))


def run_golden(path: Path, update: bool = False) -> None:
    """Run every RUN line of `path`; raise `GoldenFailure` on the first that does not hold."""
    runs = run_lines(path)
    if sum(r.check == ("diff-golden",) for r in runs) > 1:
        raise GoldenFailure(f"{path} has more than one diff-golden RUN line")
    for run in runs:
        status, output, stderr = run_dtc(run.dtc_args, run.merge_stderr)
        _check_status(run, status, stderr)
        if run.check == ("diff-golden",):
            _diff_golden(path, output, update)
        elif run.check is not None:
            code, report = filecheck(path, output, run.check[1:])
            if code != 0:
                raise GoldenFailure(f"filecheck failed\nRUN:{run.text}\n{report}\n"
                                    f"--- dtc output ---\n{output}")
