"""Effectful ops and ops with zero or several results, through every pass and the executor.

The ops are the test-only ones of `effect_ops` (registered with the public API, not by
patching the registry): ``test_print`` writes its operand and has no result, ``test_halves``
has two results; both are barriers that need their operand whole.
"""

from __future__ import annotations

import textwrap

import numpy as np
from effect_ops import PRINTED

from dtensor_compiler.ir.core import Module
from dtensor_compiler.ir.parser import parse_module
from dtensor_compiler.ir.printer import print_module
from dtensor_compiler.pass_manager import PassManager
from dtensor_compiler.passes import DEFAULT_PIPELINE
from dtensor_compiler.runtime.simulated import SimulatedExecutor
from dtensor_compiler.runtime.stacked import from_stacked, to_stacked


def module_of(body: str) -> Module:
    return parse_module(textwrap.dedent(body))


def test_cse_and_dce_keep_effectful_ops_and_their_order() -> None:
    module = module_of("""\
        mesh<x=2>
        func @f(%a: f32[4]) -> () {
          %0 = exp %a : f32[4]
          test_print %0 {tag = 1}
          test_print %0 {tag = 1}
          %1 = exp %a : f32[4]
          test_print %1 {tag = 2}
          %2 = negative %a : f32[4]
          return
        }
        """)
    PassManager.parse("simplify").run(module)
    assert [op.name for op in module.main.ops] == ["exp", "test_print", "test_print",
                                                   "test_print"]
    assert [op.attrs["tag"] for op in module.main.ops[1:]] == [1, 1, 2]
    (exp,) = [op for op in module.main.ops if op.name == "exp"]
    assert all(op.operands == (exp.result,) for op in module.main.ops[1:])


def test_an_effectful_barrier_gets_its_operand_whole_and_runs_in_program_order() -> None:
    module = module_of("""\
        mesh<dp=2, tp=4>
        func @f(%x: f32[8,16] @ {dp, tp}, %w: f32[16,4] @ {tp, -}) -> (f32[8,4]) {
          %0 = matmul %x, %w : f32[8,4]
          test_print %0 {tag = 1}
          %1 = tanh %0 : f32[8,4]
          test_print %1 {tag = 2}
          return %1
        }
        """)
    PassManager.parse("simplify,propagate-layouts,insert-collectives").run(module)
    text = print_module(module)
    # the pending sum over tp and the dp shards are resolved for the print, not left pending
    prints = [op for op in module.main.ops if op.name == "test_print"]
    for op in prints:
        assert op.operands[0].type.sharding.is_replicated(), text
    assert "test_print needs the matmul result as {-, -}: test_print cannot take a pending " \
           "sum over tp" in text
    PassManager.parse("localize").run(module)
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((8, 16)), rng.standard_normal((16, 4))
    x, w = x.astype(np.float32), w.astype(np.float32)
    args = module.main.args
    PRINTED.clear()
    (out,) = SimulatedExecutor(module).run_stacked(
        [to_stacked(a, v.type.sharding, module.mesh) for a, v in zip((x, w), args)])
    assert [tag for tag, _ in PRINTED] == [1, 2]
    np.testing.assert_allclose(PRINTED[0][1].reshape(8, 4), x @ w, rtol=1e-5)
    np.testing.assert_allclose(PRINTED[1][1].reshape(8, 4), np.tanh(x @ w), rtol=1e-5)
    result = module.main.results[0].type.sharding
    np.testing.assert_allclose(from_stacked(out, result, module.mesh), np.tanh(x @ w),
                               rtol=1e-5)


def test_an_op_with_two_results_is_placed_and_run() -> None:
    module = module_of("""\
        mesh<x=2>
        func @f(%v: f32[8] @ {x}) -> (f32[4], f32[4]) {
          %0, %1 = test_halves %v : f32[4], f32[4]
          %2 = add %0, %1 : f32[4]
          return %2, %1
        }
        """)
    PassManager.parse(DEFAULT_PIPELINE).run(module)
    halves = next(op for op in module.main.ops if op.name == "test_halves")
    assert halves.operands[0].owner.name == "all_gather"
    v = np.arange(8, dtype=np.float32)
    outs = SimulatedExecutor(module).run_stacked(
        [to_stacked(v, module.main.args[0].type.sharding, module.mesh)])
    values = [from_stacked(o, r.type.sharding, module.mesh)
              for o, r in zip(outs, module.main.results)]
    np.testing.assert_array_equal(values[0], v[:4] + v[4:])
    np.testing.assert_array_equal(values[1], v[4:])


def test_a_dead_op_with_two_results_is_removed_and_a_live_one_kept() -> None:
    module = module_of("""\
        mesh<x=2>
        func @f(%v: f32[8]) -> (f32[4]) {
          %0, %1 = test_halves %v : f32[4], f32[4]
          %2, %3 = test_halves %v : f32[4], f32[4]
          %4, %5 = test_halves %v : f32[4], f32[4]
          return %3
        }
        """)
    PassManager.parse("simplify").run(module)
    (op,) = module.main.ops
    assert module.main.results == (op.results[1],)
