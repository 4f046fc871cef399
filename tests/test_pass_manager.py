"""The pass manager: pipeline text, options, verification, stages and IR dumps."""

from __future__ import annotations

import io
from dataclasses import dataclass

import pytest

import dtensor_compiler.passes  # noqa: F401  (registers the passes)
from dtensor_compiler.errors import PassError, VerificationError
from dtensor_compiler.ir.core import Module
from dtensor_compiler.ir.parser import parse_module
from dtensor_compiler.pass_manager import (
    ModulePass,
    PassContext,
    PassManager,
    parse_pass,
    split_pipeline,
)
from dtensor_compiler.passes.simplify import SimplifyPass

MLP = """\
mesh<dp=2, tp=4>
func @mlp(%x: f32[16,8] @ {dp, -}, %w1: f32[8,32] @ {-, tp}, %w2: f32[32,8] @ {tp, -}) -> (f32[16,8] @ {dp, -}) {
  %0 = matmul %x, %w1 : f32[16,32]
  %1 = tanh %0 : f32[16,32]
  %2 = matmul %1, %w2 : f32[16,8]
  %3 = relayout %2 : f32[16,8] @ {dp, -}  // why: out_layouts[0]
  return %3
}
"""


@dataclass(frozen=True)
class BreakTypesPass(ModulePass):
    """Test-only (not registered): corrupts the first op's result shape."""

    name = "test-break-types"

    def apply(self, module: Module, ctx: PassContext) -> None:
        op = module.main.ops[0]
        op.result.type = op.result.type.with_shape((1, 1))


@dataclass(frozen=True)
class CrashPass(ModulePass):
    """Test-only: fails with an internal error."""

    name = "test-crash"

    def apply(self, module: Module, ctx: PassContext) -> None:
        raise ZeroDivisionError("boom")


def test_pipeline_text_round_trips_with_options() -> None:
    pm = PassManager.parse("simplify{fold-limit=8}, propagate-layouts,insert-collectives")
    assert [type(p) for p in pm.passes][0] is SimplifyPass
    assert pm.passes[0] == SimplifyPass(fold_limit=8)
    assert pm.text() == "simplify{fold-limit=8},propagate-layouts,insert-collectives"
    assert PassManager.parse(pm.text()).text() == pm.text()


def test_split_pipeline_keeps_braces_together() -> None:
    assert split_pipeline("a{x=1,y=2},b") == ["a{x=1,y=2}", "b"]


@pytest.mark.parametrize(("text", "message"), [
    ("no-such-pass", r"unknown pass 'no-such-pass'; known passes: .*insert-collectives"),
    ("simplify{speed=3}", r"pass 'simplify' has no option 'speed' \(options: fold-limit\)"),
    ("simplify{fold-limit=many}", r"'many' is not a valid int"),
    ("Simplify", r"malformed pass 'Simplify'"),
])
def test_bad_pipelines_name_the_fault(text: str, message: str) -> None:
    with pytest.raises(PassError, match=message):
        parse_pass(text)


def test_stages_are_named_timed_and_keep_the_ir() -> None:
    pm = PassManager.parse("propagate-layouts,insert-collectives")
    module = pm.run(parse_module(MLP), input_stage="input")
    assert [s.name for s in pm.stages] == ["input", "propagate-layouts", "insert-collectives"]
    assert all(s.seconds >= 0 for s in pm.stages)
    assert pm.stages[0].ir == MLP
    assert "all_reduce %2 {mesh_dims = [tp], op = sum}" in pm.stages[-1].ir
    assert module.main.ops[-1].name == "all_reduce"


def test_keep_ir_false_keeps_no_text() -> None:
    pm = PassManager.parse("propagate-layouts", keep_ir=False)
    pm.run(parse_module(MLP))
    assert [s.ir for s in pm.stages] == [None]


def test_print_after_all_writes_mlir_style_headers() -> None:
    out = io.StringIO()
    PassManager.parse("propagate-layouts,insert-collectives", print_after_all=True,
                      out=out).run(parse_module(MLP))
    text = out.getvalue()
    assert text.startswith("// -----// IR Dump After propagate-layouts //----- //\nmesh<")
    assert "\n// -----// IR Dump After insert-collectives //----- //\nmesh<" in text


def test_the_verifier_runs_after_each_pass_and_names_it() -> None:
    with pytest.raises(VerificationError, match="after pass 'test-break-types'") as info:
        PassManager([BreakTypesPass()]).run(parse_module(MLP))
    assert "> " in str(info.value)
    PassManager([BreakTypesPass()], verify=False).run(parse_module(MLP))


def test_an_internal_error_names_the_pass_and_what_ran_before() -> None:
    pm = PassManager([*PassManager.parse("propagate-layouts").passes, CrashPass()])
    with pytest.raises(PassError, match=r"pass 'test-crash' failed \(after: propagate-layouts\): "
                                        r"ZeroDivisionError: boom"):
        pm.run(parse_module(MLP))
