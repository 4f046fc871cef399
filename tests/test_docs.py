"""The documentation stays true: the README's code runs, its commands are the ones CI runs,
the generated reference pages match their generators, and every public name is documented."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def _blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, re.S | re.M)


def _readme() -> str:
    return README.read_text(encoding="utf-8")


def test_readme_python_blocks_run_in_a_fresh_interpreter(tmp_path: Path) -> None:
    blocks = _blocks(_readme(), "python")
    assert blocks, "the README has no python code block"
    script = tmp_path / "readme_blocks.py"
    script.write_text("\n\n".join(blocks), encoding="utf-8")
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, f"README python blocks failed:\n{done.stderr}"
    assert "all_reduce" in done.stdout


def _opening_commands() -> list[str]:
    head = _readme().split("\n---\n", 1)[0]
    return [b.strip() for b in _blocks(head, "")]


def test_readme_opens_with_the_demo_and_the_test_command() -> None:
    demo, tests = _opening_commands()
    assert demo == "pip install -e . && python examples/megatron_mlp.py"
    assert (ROOT / "examples" / "megatron_mlp.py").is_file()
    assert tests.startswith('pip install -e ".[test]"') and tests.endswith("pytest")


def test_ci_runs_the_readme_test_command() -> None:
    _, tests = _opening_commands()
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert tests in ci, f"{tests!r} is not a line of .ci/run"
