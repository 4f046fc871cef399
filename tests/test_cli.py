"""`dtc` driven as a subprocess, the way a user runs it: output, exit status, error lines."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dtensor_compiler.cli.target import load_function
from dtensor_compiler.compile import Lowered, TensorSpec
from dtensor_compiler.explain import format_bytes
from dtensor_compiler.ir.printer import format_seconds

FIXTURES = Path(__file__).parent / "cli_fixtures"
MLP = f"{FIXTURES / 'mlp.py'}:mlp"
SHAPES = ("--shapes", "16x8,8x32,32x8")
STAGES = ["trace", "simplify", "propagate-layouts", "expand-checkpoints", "insert-collectives",
          "narrow-early", "mask-padding", "localize"]
IR = """mesh<x=2>
func @f(%a: f32[4,6] @ {x, -}) -> (f32[4,6] @ {-, -}) {
  %0 = relayout %a : f32[4,6] @ {-, -}  // why: returned replicated
  return %0
}
"""


def dtc(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dtensor_compiler.cli", *args], input=stdin,
                          capture_output=True, text=True, check=False)


def error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The one line a failing command prints, checked to be one line."""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("dtc: error: "), done.stderr
    return lines[0]


def lowered_mlp() -> Lowered:
    """The MLP fixture lowered in this process, to compare the CLI's output with."""
    return load_function(MLP).lower(TensorSpec((16, 8)), TensorSpec((8, 32)),
                                    TensorSpec((32, 8)))


# -- usage ----------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["", "dump", "opt", "explain", "graph", "run"])
def test_help(command: str) -> None:
    done = dtc(*filter(None, [command, "--help"]))
    assert done.returncode == 0
    assert done.stdout.startswith("usage: dtc")


def test_bad_usage_exits_2() -> None:
    assert dtc().returncode == 2
    assert dtc("dump", MLP, "--no-such-flag").returncode == 2
    done = dtc("ckpt", "ls")
    assert done.returncode == 2
    assert "the following arguments are required: PREFIX" in done.stderr
    done = dtc("nosuch")
    assert done.returncode == 2 and "invalid choice: 'nosuch'" in done.stderr


# -- FILE.py:FUNC targets -------------------------------------------------------------------


@pytest.mark.parametrize(("target", "message"), [
    ("no_such_file.py:f", "no_such_file.py: no such file"),
    (f"{FIXTURES / 'mlp.py'}:nope",
     "has no function 'nope' (dtc-compiled functions: mlp)"),
    (f"{FIXTURES / 'mlp.py'}:not_compiled",
     "mlp.py:not_compiled is not a dtc-compiled function"),
    (f"{FIXTURES / 'mlp.py'}", "expected FILE.py:FUNC"),
])
def test_bad_target(target: str, message: str) -> None:
    done = dtc("dump", target, *SHAPES)
    assert done.returncode == 2
    assert message in error_line(done)


def test_file_that_fails_to_load() -> None:
    done = dtc("dump", f"{FIXTURES / 'broken.py'}:f")
    assert done.returncode == 1
    assert "RuntimeError: this file is broken on purpose" in error_line(done)


@pytest.mark.parametrize("shapes", ["16x8,8xq,32x8", "16x8:f99", "16x8,,32x8", "x8"])
def test_bad_shapes(shapes: str) -> None:
    done = dtc("dump", MLP, "--shapes", shapes)
    assert done.returncode == 2
    assert "bad --shapes entry" in error_line(done)


def test_shapes_with_an_unknown_dtype_lists_the_dtypes() -> None:
    from dtensor_compiler.ir.types import DTYPE_NAMES

    done = dtc("dump", MLP, "--shapes", "16x8:f99,8x32,32x8")
    assert done.returncode == 2
    assert error_line(done) == ("dtc: error: bad --shapes entry '16x8:f99': unknown dtype "
                                f"'f99'; dtypes are {', '.join(DTYPE_NAMES)}")


def test_wrong_number_of_shapes_is_a_compile_error() -> None:
    done = dtc("dump", MLP, "--shapes", "16x8,8x32")
    assert done.returncode == 1
    assert error_line(done) == "dtc: error: mlp(x, w1, w2): missing a required argument: 'w2'"


def test_no_specs_needs_shapes() -> None:
    done = dtc("dump", MLP)
    assert done.returncode == 2
    assert "has no input specs: pass --shapes" in error_line(done)


def test_specs_of_the_compiled_function() -> None:
    done = dtc("dump", f"{FIXTURES / 'with_specs.py'}:gather_rows", "--stage", "trace")
    assert done.returncode == 0, done.stderr
    assert "func @gather_rows(%a: f32[8,4] @ {x, -})" in done.stdout


def test_debug_shows_the_traceback() -> None:
    done = dtc("--debug", "dump", MLP, "--shapes", "16x8,8x32")
    assert done.returncode == 1
    assert done.stderr.startswith("Traceback")
    assert "TraceError" in done.stderr


# -- dump -----------------------------------------------------------------------------------


def test_dump_final_and_any_stage() -> None:
    low = lowered_mlp()
    assert low.stages == STAGES
    final = dtc("dump", MLP, *SHAPES)
    assert final.returncode == 0, final.stderr
    assert final.stdout == low.ir("localize")
    assert final.stdout.startswith("mesh<dp=2, tp=4> local\n")
    stage = dtc("dump", MLP, *SHAPES, "--stage", "propagate-layouts")
    assert stage.stdout == low.ir("propagate-layouts")


def test_dump_print_after_all_and_list_stages() -> None:
    done = dtc("dump", MLP, *SHAPES, "--print-after-all")
    headers = re.findall(r"^// -----// IR Dump After (\S+) //----- //$", done.stdout, re.M)
    assert headers == STAGES
    assert dtc("dump", MLP, *SHAPES, "--list-stages").stdout.split() == STAGES


def test_dump_unknown_stage() -> None:
    done = dtc("dump", MLP, *SHAPES, "--stage", "fuse")
    assert done.returncode == 2
    assert error_line(done) == ("dtc: error: unknown stage 'fuse'; stages are: "
                                + ", ".join([*STAGES, "final"]))


def test_dump_locations_end_every_op_with_its_line() -> None:
    done = dtc("dump", MLP, *SHAPES, "--stage", "trace", "--locations")
    assert done.returncode == 0, done.stderr
    ops = [line for line in done.stdout.splitlines() if line.startswith("  %")]
    assert ops and all(re.search(r' loc\("tests/cli_fixtures/mlp\.py":\d+\)', line)
                       for line in ops)
    plain = dtc("dump", MLP, *SHAPES, "--stage", "trace").stdout
    assert re.sub(r' loc\("[^"]*":\d+\)', "", done.stdout) == plain


def test_dump_stage_final_is_the_last_stage() -> None:
    done = dtc("dump", MLP, *SHAPES, "--stage", "final")
    assert done.returncode == 0, done.stderr
    assert done.stdout == lowered_mlp().ir("localize")


# -- opt ------------------------------------------------------------------------------------


def test_opt_file_and_stdin(tmp_path: Path) -> None:
    path = tmp_path / "in.dtir"
    path.write_text(IR)
    from_file = dtc("opt", str(path), "-p", "insert-collectives")
    assert from_file.returncode == 0, from_file.stderr
    assert ("  %0 = all_gather %a {mesh_dims = [x], axis = 0} : f32[4,6] @ {-, -}  "
            "// why: returned replicated\n") in from_file.stdout
    from_stdin = dtc("opt", "-", "-p", "insert-collectives", stdin=IR)
    assert from_stdin.stdout == from_file.stdout
    assert dtc("opt", "-", stdin=IR).stdout == IR


def test_opt_print_after_all_goes_to_stderr() -> None:
    done = dtc("opt", "-", "-p", "insert-collectives,localize", "--print-after-all", stdin=IR)
    assert done.returncode == 0
    assert re.findall(r"IR Dump After (\S+)", done.stderr) == ["insert-collectives",
                                                                "localize"]
    assert done.stdout.startswith("mesh<x=2> local\n")


def test_opt_malformed_ir_gives_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.dtir"
    path.write_text(IR.replace("%0 = relayout %a", "%0 = relayout %b"))
    done = dtc("opt", str(path))
    assert done.returncode == 1
    assert error_line(done) == (f"dtc: error: {path}: line 3, column 17: value %b is used "
                                "before it is defined")


def test_opt_verifier_errors_give_the_files_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.dtir"
    path.write_text("mesh<dp=2, tp=4>\n"
                    "func @f(%x: f32[8,8] @ {dp, -}) -> (f32[8,8] @ {-, -}) {\n"
                    "  %0 = all_gather %x {mesh_dims = [tp], axis = 0} : f32[8,8] @ {-, -}\n"
                    "  return %0\n"
                    "}\n")
    done = dtc("opt", str(path))
    assert done.returncode == 1
    assert error_line(done) == (
        f"dtc: error: {path}: line 3, column 8: IR verification failed in @f: all_gather: "
        "all_gather over ['tp'] needs dim 0 to end with them, layout is {dp, -}")


def test_opt_stage_prints_the_ir_after_that_pass() -> None:
    pipeline = "insert-collectives,localize"
    after_insert = dtc("opt", "-", "-p", "insert-collectives", stdin=IR).stdout
    final = dtc("opt", "-", "-p", pipeline, stdin=IR).stdout
    assert final.startswith("mesh<x=2> local\n")
    for stage, expected in [("input", IR), ("insert-collectives", after_insert),
                            ("localize", final), ("final", final)]:
        done = dtc("opt", "-", "-p", pipeline, "--stage", stage, stdin=IR)
        assert done.returncode == 0, done.stderr
        assert done.stdout == expected, stage
    done = dtc("opt", "-", "-p", pipeline, "--stage", "simplify", stdin=IR)
    assert done.returncode == 2
    assert error_line(done) == ("dtc: error: unknown stage 'simplify'; stages are: input, "
                                "insert-collectives, localize, final")
    done = dtc("opt", "-", "-p", "simplify,simplify", "--stage", "simplify", stdin=IR)
    assert done.returncode == 2
    assert "simplify runs 2 times in the pipeline" in error_line(done)


def test_opt_unknown_pass_and_missing_file() -> None:
    done = dtc("opt", "-", "-p", "simplify,fuse-everything", stdin=IR)
    assert done.returncode == 2
    assert "unknown pass 'fuse-everything'; known passes: " in error_line(done)
    done = dtc("opt", "missing.dtir")
    assert done.returncode == 2
    assert error_line(done) == "dtc: error: missing.dtir: no such file"


def test_opt_input_that_is_not_utf8_is_bad_usage(tmp_path: Path) -> None:
    (tmp_path / "latin1.dtir").write_bytes(IR.encode() + b"// caf\xe9\n")
    done = dtc("opt", str(tmp_path / "latin1.dtir"))
    assert done.returncode == 2
    assert "latin1.dtir: not UTF-8 text (byte" in error_line(done)


def test_a_function_named_beyond_ascii_dumps_ir_that_parses(tmp_path: Path) -> None:
    """IR names are ASCII (the grammar's): `scalé` is traced as `scal`."""
    (tmp_path / "uni.py").write_text("import numpy as np\nimport dtensor_compiler as dtc\n\n"
                                     "@dtc.compile\ndef scalé(x):\n    return x * 2\n",
                                     encoding="utf-8")
    dumped = dtc("dump", f"{tmp_path / 'uni.py'}:scalé", "--shapes", "8")
    assert dumped.returncode == 0, dumped.stderr
    assert "func @scal(" in dumped.stdout
    assert dtc("opt", "-", stdin=dumped.stdout).returncode == 0


# -- explain --------------------------------------------------------------------------------


def test_explain_lists_every_collective() -> None:
    (record,) = lowered_mlp().collectives()
    # f32[8,8] per device after the all_reduce: 256 bytes, fastest exchanged whole in
    # log2(4) = 2 steps: the launch (10 us) plus 2 steps of 5 us: 20 us
    assert (record.kind, record.mesh_dims, record.bytes) == ("all_reduce", ("tp",), 256)
    assert record.seconds == pytest.approx(20e-6, rel=1e-3)
    residual = 1 + (FIXTURES / "mlp.py").read_text().splitlines().index(
        "    return x + h  # the all_reduce is needed here")
    done = dtc("explain", MLP, *SHAPES)
    assert done.returncode == 0, done.stderr
    header, row, total = done.stdout.splitlines()
    assert header.split() == ["#", "op", "kind", "mesh", "dims", "bytes", "time", "why"]
    assert re.fullmatch(r"1  %3  all_reduce  tp         256 B  20\.0 us  add at \S*mlp\.py:"
                        f"{residual} needs the matmul result .*", row), row
    assert total == "total: 1 collective, 256 B, 20.0 us"


def test_explain_units() -> None:
    assert [format_bytes(n) for n in (512, 1536, 3 << 20, 5 << 30)] == [
        "512 B", "1.5 KiB", "3.0 MiB", "5.0 GiB"]
    assert [format_seconds(s) for s in (4e-6, 2.5e-3, 1.25)] == ["4.0 us", "2.5 ms", "1.2 s"]


# -- graph ----------------------------------------------------------------------------------


def test_graph_dot(tmp_path: Path) -> None:
    out = tmp_path / "mlp.dot"
    done = dtc("graph", MLP, *SHAPES, "-o", str(out), "--stage", "insert-collectives")
    assert done.returncode == 0, done.stderr
    dot = out.read_text()
    assert dot.startswith('digraph "mlp" {')
    assert re.search(r'\n  op3 \[label="%3 = all_reduce \[tp\]", shape="box", '
                     r'style="filled,bold", fillcolor="#f4a261", tooltip="add at \S*mlp\.py:\d+ '
                     r'needs the matmul result', dot), dot
    assert '\n  arg1 -> op0 [label="f32[8,32] @ {-, tp}"];\n' in dot
    assert ('\n  op2 -> op3 [label="f32[16,8] @ {dp, -} partial(tp:sum)", style="dashed", '
            'color="#c0392b"];\n') in dot
    assert "\n  op4 -> return [label=" in dot


def test_graph_draws_global_shapes_by_default(tmp_path: Path) -> None:
    out = tmp_path / "mlp.dot"
    assert dtc("graph", MLP, *SHAPES, "-o", str(out)).returncode == 0
    staged = tmp_path / "staged.dot"
    assert dtc("graph", MLP, *SHAPES, "-o", str(staged), "--stage",
               "insert-collectives").returncode == 0
    assert out.read_text() == staged.read_text()


@pytest.mark.skipif(shutil.which("dot") is None, reason="needs graphviz's dot")
def test_graph_svg(tmp_path: Path) -> None:
    out = tmp_path / "mlp.svg"
    done = dtc("graph", MLP, *SHAPES, "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert out.read_text().lstrip().startswith("<")


def test_graph_png_without_graphviz_exits_2(tmp_path: Path) -> None:
    out = tmp_path / "x.png"
    done = subprocess.run([sys.executable, "-m", "dtensor_compiler.cli", "graph", MLP, *SHAPES,
                           "-o", str(out)], capture_output=True, text=True, check=False,
                          env={**os.environ, "PATH": str(tmp_path)})  # no dot on this PATH
    assert done.returncode == 2
    assert error_line(done) == (f"dtc: error: cannot draw {out}: graphviz's 'dot' is not "
                                "installed; install graphviz or write the DOT text with -o "
                                f"{tmp_path / 'x.dot'}")
    assert list(tmp_path.iterdir()) == []


def test_graph_unknown_format(tmp_path: Path) -> None:
    done = dtc("graph", MLP, *SHAPES, "-o", str(tmp_path / "g.txt"))
    assert done.returncode == 2
    assert "the output must end in .dot, .svg, .png, .pdf" in error_line(done)


# -- run ------------------------------------------------------------------------------------


def test_run_matches_numpy() -> None:
    done = dtc("run", MLP, *SHAPES, "--seed", "3")
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.match(r"output 0: float32\[16, 8\], max abs error \S+: ok\n", done.stdout)
    assert done.stdout.endswith("ok: every output matches numpy (seed 3)\n")


def test_run_compares_a_nested_result_array_by_array() -> None:
    done = dtc("run", f"{FIXTURES / 'structured.py'}:stats")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[:3] == [
        "output 0: float32[8, 4], max abs error 0: ok",
        "output 1: float32[4], max abs error 0: ok",
        "output 2: float32[], max abs error 0: ok"]


def test_run_mismatch_exits_1() -> None:
    """With zero tolerance the float32 sums, reduced across tp in another order than numpy's,
    differ in the last bits: the run reports the mismatch and exits 1."""
    done = dtc("run", MLP, *SHAPES, "--rtol", "0", "--atol", "0")
    assert done.returncode == 1, done.stdout
    assert "MISMATCH" in done.stdout
    assert done.stdout.endswith("FAILED: the simulated mesh differs from numpy (seed 0)\n")
