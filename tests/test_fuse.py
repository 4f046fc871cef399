"""The fuse pass: which ops become kernels, and fused programs running on the simulated mesh
(the numpy backend runs a kernel's body op by op)."""

from __future__ import annotations

import numpy as np
import pytest
from models import layernorm_gelu

import dtensor_compiler as dtc
from dtensor_compiler.ir.parser import parse_module
from dtensor_compiler.ir.printer import print_module
from dtensor_compiler.ir.verifier import verify_module
from dtensor_compiler.pass_manager import PassManager
from dtensor_compiler.passes import FUSED_PIPELINE

U = dtc.UNSHARDED


@pytest.fixture
def mesh() -> dtc.Mesh:
    return dtc.create_mesh([("x", 2), ("y", 4)])


def _kernels(text: str) -> list[str]:
    return [line.split("body = ")[1].split("}")[0] for line in text.splitlines()
            if "= kernel " in line]


def test_a_fused_program_equals_numpy_on_uneven_blocks(mesh):
    """Rows of 10 over x=2 and columns of 7 over y=4 (blocks 2, 2, 2, 1, padded): the
    statistics are row kernels and the layernorm's elementwise tail and the whole GELU one
    kernel; values equal numpy on
    every call (the first is checked, later ones run as straight-line code)."""
    f = dtc.compile(layernorm_gelu, in_layouts=(dtc.Layout(["x", "y"], mesh),
                                                dtc.Layout(["y"], mesh)),
                    pipeline=FUSED_PIPELINE)
    rng = np.random.default_rng(0)
    x, g = rng.standard_normal((10, 7)), rng.standard_normal(7)
    for _ in range(2):
        np.testing.assert_allclose(np.asarray(f(x, g)), layernorm_gelu(x, g), rtol=1e-12,
                                   atol=1e-12)
    text = f.lower(x, g).ir()
    # each statistic's local sum and its division by the count are one row kernel, its
    # all_reduce over y the boundary; the normalization and the whole GELU are one kernel
    # (the normalized value has several consumers, all in it)
    assert _kernels(text) == ["layernorm_gelu_k0_reduce_sum_divide",
                              "layernorm_gelu_k1_reduce_sum_divide",
                              "layernorm_gelu_k2_add_sqrt_divide_multiply"]
    assert "  %15 = tanh %14 " in text.split("func @layernorm_gelu_k0")[1]
    module = parse_module(text)
    verify_module(module)
    assert print_module(module) == text
    plain = dtc.compile(layernorm_gelu, in_layouts=(dtc.Layout(["x", "y"], mesh),
                                                    dtc.Layout(["y"], mesh)))
    assert f.lower(x, g).collectives() == plain.lower(x, g).collectives()


def test_min_ops_one_makes_every_elementwise_op_a_kernel(mesh):
    f = dtc.compile(lambda a: np.exp(a).sum(axis=0), in_layouts=dtc.Layout(["x", U], mesh),
                    pipeline=FUSED_PIPELINE.replace("fuse", "fuse{min-ops=1}"))
    a = np.arange(12.0).reshape(4, 3)
    assert _kernels(f.lower(a).ir()) == ["lambda_k0_exp"]
    np.testing.assert_allclose(np.asarray(f(a)), np.exp(a).sum(axis=0))
    g = dtc.compile(lambda a: np.exp(a).sum(axis=0), in_layouts=dtc.Layout(["x", U], mesh),
                    pipeline=FUSED_PIPELINE)
    assert _kernels(g.lower(a).ir()) == []


def test_fusing_again_leaves_the_bodies_alone(mesh):
    f = dtc.compile(layernorm_gelu, in_layouts=(dtc.Layout(["x", U], mesh),
                                                dtc.Layout([U], mesh)),
                    pipeline=FUSED_PIPELINE)
    x, g = np.ones((4, 8)), np.ones(8)
    once = parse_module(f.lower(x, g).ir())
    again = PassManager.parse("fuse").run(parse_module(f.lower(x, g).ir()))
    assert print_module(again) == print_module(once)


def test_returned_and_shared_values_end_groups(mesh):
    """t is returned and u has two consumers: each ends its group (t and u are computed
    once), and the single ops on u stay ops (below min-ops)."""
    def f(a, b):
        t = np.tanh(a * b)
        u = np.exp(t - 1.0)
        return t, u * 2.0, u + 3.0

    c = dtc.compile(f, in_layouts=(dtc.Layout(["x", U], mesh), dtc.Layout(["x", U], mesh)),
                    pipeline=FUSED_PIPELINE)
    a, b = np.full((4, 2), 0.5), np.full((4, 2), 2.0)
    assert _kernels(c.lower(a, b).ir()) == ["f_k0_multiply_tanh", "f_k1_subtract_exp"]
    for got, want in zip(c(a, b), f(a, b)):
        np.testing.assert_allclose(np.asarray(got), want)


def test_a_second_fuse_names_its_kernels_apart_from_the_first(mesh):
    text = """mesh<x=2> local
func @f(%a: f32[4] @ {x}, %b: f32[4] @ {x}) -> (f32[4] @ {x}, f32[4] @ {x}) {
  %0 = exp %a : f32[4] @ {x}
  %1 = exp %0 : f32[4] @ {x}
  %2 = exp %1 : f32[4] @ {x}
  %3 = exp %b : f32[4] @ {x}
  %4 = exp %3 : f32[4] @ {x}
  return %2, %4
}
"""
    module = PassManager.parse("fuse{min-ops=3},fuse").run(parse_module(text))
    assert [f.name for f in module.functions] == ["f", "f_k0_exp", "f_k1_exp"]
    assert print_module(parse_module(print_module(module))) == print_module(module)
