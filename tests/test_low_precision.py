"""bfloat16 and float8 (e4m3fn, e5m2) through the IR, the tracer and the numpy backend, with
numpy's own promotion (as ml_dtypes registers it)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import ml_dtypes
import numpy as np
import pytest

import dtensor_compiler as dtc
from dtensor_compiler.ir.builder import Builder
from dtensor_compiler.ir.core import Function, Module
from dtensor_compiler.ir.mesh_shape import MeshShape
from dtensor_compiler.ir.opdef import InferContext
from dtensor_compiler.ir.parser import parse_module
from dtensor_compiler.ir.printer import print_module
from dtensor_compiler.ir.types import TensorType, dtype_name, numpy_dtype, unknown_dtype_message
from dtensor_compiler.runtime.stacked import reduction_identity

BF16, E4M3, E5M2 = ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2
MESH = dtc.create_mesh([("dp", 2), ("tp", 4)])
LAYOUTS = (dtc.Layout(["dp", "tp"], MESH), dtc.Layout(["tp", dtc.UNSHARDED], MESH))


def test_names_map_both_ways() -> None:
    for name, t in (("bf16", BF16), ("f8e4m3", E4M3), ("f8e5m2", E5M2)):
        assert dtype_name(t) == name and numpy_dtype(name) == np.dtype(t)
    assert "pip install ml_dtypes" in unknown_dtype_message("bf16")


def test_ml_dtypes_is_imported_when_a_low_precision_type_is_first_needed() -> None:
    """Its import takes about a second, so `import dtensor_compiler` must not pay it."""
    script = ("import sys, numpy as np, dtensor_compiler as dtc\n"
              "from dtensor_compiler.ir.types import dtype_name, is_floating, numpy_dtype\n"
              "assert 'ml_dtypes' not in sys.modules\n"
              "assert is_floating(np.dtype('f4')) and dtype_name(np.int8) == 'i8'\n"
              "assert 'ml_dtypes' not in sys.modules\n"
              "assert str(numpy_dtype('bf16')) == 'bfloat16'\n"
              "assert 'ml_dtypes' in sys.modules\n")
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)


def test_types_and_constants_print_and_parse_back() -> None:
    text = ("mesh<x=2>\nfunc @f(%a: bf16[4] @ {x}) -> (bf16[4] @ {x}, f8e4m3[20] @ {-}, "
            "f8e5m2[2] @ {-}) {\n"
            "  %0 = constant {value = dense<[1.5, -2.0]>} : f8e5m2[2] @ {-}\n"
            "  %1 = full {value = 0.5} : f8e4m3[20] @ {-}\n"
            "  %2 = add %a, %a : bf16[4] @ {x}\n"
            "  return %2, %1, %0\n}\n")
    module = parse_module(text)
    assert print_module(module) == text
    assert module.main.ops[0].attrs["value"].dtype == np.dtype(E5M2)



def test_long_low_precision_constants_round_trip_as_raw_bytes() -> None:
    big = (np.arange(20) / 3).astype(BF16)
    func = Function("f", [])
    value = Builder(func, InferContext(MeshShape(()))).create(
        "constant", [], {"value": big}, declared=TensorType("bf16", (20,)))
    func.set_results([value])
    printed = print_module(Module(MeshShape(()), [func]))
    assert "dense_hex<" in printed
    again = parse_module(printed)
    assert print_module(again) == printed
    np.testing.assert_array_equal(again.main.ops[0].attrs["value"], big)


CASES: list[Callable] = [
    lambda x, w: x @ w,                        # bf16 @ bf16 is f32 in numpy
    lambda x, w: np.dot(x, w),                 # ... and bf16 with dot
    lambda x, w: np.tanh(x) * 2.0 + 1,
    lambda x, w: x.sum(axis=1),
    lambda x, w: x.max(axis=0),
    lambda x, w: x.mean(axis=1),
    lambda x, w: np.tensordot(x, w, 1),        # an einsum op: computed in f32, cast back
    lambda x, w: x.astype(np.float32) + w.T,
    lambda x, w: np.cumsum(x, axis=1),
    lambda x, w: x + np.float32(1),
    lambda x, w: (x.astype(E4M3) * 2).astype(np.float32),
    lambda x, w: x.astype(E5M2).max(axis=1),
    lambda x, w: x.astype(E4M3).max(axis=1),   # e4m3fn has no -inf: identity is -448
]


@pytest.mark.parametrize("fn", CASES)
def test_compiled_programs_match_numpy_in_dtype_and_value(fn: Callable) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 16)).astype(BF16)
    w = rng.standard_normal((16, 8)).astype(BF16)
    got = np.asarray(dtc.compile(fn, in_layouts=LAYOUTS)(x, w))
    want = np.asarray(fn(x, w))
    assert got.dtype == want.dtype
    np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=3e-2,
                               atol=3e-2)


def test_einsum_on_bfloat16_raises_like_numpy() -> None:
    x = np.ones((8, 16), BF16)
    with pytest.raises(dtc.ShapeError, match="numpy.einsum: invalid data type"):
        dtc.compile(lambda x: np.einsum("ij->i", x))(x)


def test_max_identity_of_a_float_without_infinities_is_its_lowest_value() -> None:
    assert float(reduction_identity("max", np.dtype(E4M3))) == -448.0
    assert float(reduction_identity("min", np.dtype(E4M3))) == 448.0
    assert np.isinf(reduction_identity("max", np.dtype(BF16)))
    layout = dtc.Layout([dtc.UNSHARDED], MESH, partial={"tp": "max"})
    parts = [np.full(2, -5.0 + d % 4, E4M3) for d in range(8)]
    np.testing.assert_array_equal(np.asarray(dtc.pack(parts, layout)).astype(np.float32),
                                  [-2.0, -2.0])
    whole = dtc.relayout(dtc.copy_to_mesh(np.full(2, -300.0, E4M3), dtc.Layout([dtc.UNSHARDED],
                                                                               MESH)), layout)
    np.testing.assert_array_equal(np.asarray(whole).astype(np.float32), [-288.0, -288.0])


@pytest.mark.parametrize("fn", [
    lambda x: np.clip(x, -1, 1),            # numpy clips bf16 with Python bounds in float32
    lambda x: np.clip(x, 0.3, None),
    lambda x: np.inner(x.astype(E5M2), x.astype(E5M2)),   # e5m2 has kind 'f', still no
    lambda x: np.tensordot(x.astype(E5M2), x.T.astype(E5M2), 1),  # einsum loop in numpy
])
def test_clip_and_contractions_of_low_precision_floats_follow_numpy(fn: Callable) -> None:
    x = np.linspace(-2, 2, 32).reshape(4, 8).astype(BF16)
    got = np.asarray(dtc.compile(fn)(x))
    want = np.asarray(fn(x))
    assert got.dtype == want.dtype
    np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=0.2)


@pytest.mark.parametrize("name", ["bfloat16", "float8_e4m3fn", "float8_e5m2"])
def test_argmax_and_argmin_find_the_first_nan_of_low_precision_floats(name):
    dtype = getattr(ml_dtypes, name)
    x = np.array([1, np.nan, 3, 0, np.nan, 5, 1, 0], dtype=dtype)
    mesh = dtc.create_mesh([("dp", 2), ("tp", 4)])
    for spec in ([dtc.UNSHARDED], ["tp"]):
        f = dtc.compile(lambda x: (np.argmax(x), np.argmin(x)),
                        in_layouts=dtc.Layout(spec, mesh))
        assert [int(np.asarray(r)) for r in f(x)] == [np.argmax(x), np.argmin(x)] == [1, 1]
