"""The documentation stays true: the README's code runs, its commands are the ones CI runs,
the generated reference pages match their generators, and every public name is documented."""

from __future__ import annotations

import os
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
    env = {**os.environ, "DTC_CACHE_DIR": str(tmp_path / "cache")}  # generated kernels
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env=env)
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


def test_numpy_reference_page_is_current() -> None:
    from dtensor_compiler.tracing.reference import render

    page = (ROOT / "docs" / "numpy.md").read_text(encoding="utf-8")
    assert page == render(), ("docs/numpy.md is out of date; regenerate it with "
                              "`python -m dtensor_compiler.tracing.reference > docs/numpy.md`")


def test_numpy_reference_lists_every_function_with_its_ops() -> None:
    from dtensor_compiler.tracing import numpy_api
    from dtensor_compiler.tracing.reference import render

    page = render()
    for func in numpy_api.FUNCTIONS:
        assert f"| `{numpy_api.qualified_name(func)}` |" in page
    rows = {line.split(" | ")[0]: line for line in page.splitlines()}
    assert "`reduce_sum`" in rows["| `numpy.sum`"]
    assert "pending sum" in rows["| `numpy.sum`"]
    assert "elementwise: any layout" in rows["| `numpy.tanh`"]
    assert "replicates the axis" in rows["| `numpy.sort`"]
    assert "pending sum" in rows["| `numpy.take`"]
    assert "no op" in rows["| `x.shape`"]


def _public_objects() -> list[tuple[str, object]]:
    import inspect

    import dtensor_compiler as dtc

    out: list[tuple[str, object]] = []
    for name in dtc.__all__:
        obj = getattr(dtc, name)
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        out.append((name, obj))
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                if attr.startswith("_"):
                    continue
                if isinstance(member, (staticmethod, classmethod)):
                    member = member.__func__
                if isinstance(member, property):
                    out.append((f"{name}.{attr}", member.fget))
                elif inspect.isfunction(member):
                    out.append((f"{name}.{attr}", member))
    return out


def test_every_public_name_has_a_docstring() -> None:
    objects = _public_objects()
    assert len(objects) > 40
    missing = [name for name, obj in objects if not (getattr(obj, "__doc__", None) or "").strip()]
    assert not missing, f"public names without a docstring: {missing}"


def test_ir_reference_snippets_parse_and_print_back() -> None:
    from dtensor_compiler.ir.parser import parse_module
    from dtensor_compiler.ir.printer import print_module

    snippets = _blocks((ROOT / "docs" / "ir.md").read_text(encoding="utf-8"), "dtir")
    assert len(snippets) >= 3
    for text in snippets:
        module = parse_module(text)
        assert print_module(module).rstrip("\n") == text.rstrip("\n")
    assert "// why: out_layouts[0] of mlp" in snippets[0]
