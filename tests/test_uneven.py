"""Uneven shards end to end: every op that reads padding as data sees its reduction's identity
there, selected (never multiplied) in, and nothing else is masked.

10 rows over x=4 are blocks of 3 holding 3, 3, 3 and 1 rows; 5 over 4 hold 2, 2, 1, 0. Inputs
are placed with zero padding, so each test first computes `garbage(a)`: finite on valid
elements, NaN or -inf on padding (sqrt of -1, log of 0). A mask that multiplied, or a missing
mask, would turn results into NaN.
"""

from __future__ import annotations

import numpy as np
import pytest

import dtensor_compiler as dtc
from dtensor_compiler.ir.core import Level
from dtensor_compiler.ir.parser import parse_module
from dtensor_compiler.runtime.simulated import SimulatedExecutor
from dtensor_compiler.runtime.stacked import to_stacked

U = dtc.UNSHARDED
MESH = dtc.create_mesh([("x", 4)])
ROWS = dtc.Layout(["x", U], MESH)


def garbage(a):
    """Finite where `a` >= 1 (every valid element here), NaN and -inf on zero padding."""
    return np.sqrt(a - 1.0) + np.log(a)


def inputs(rows: int = 10, cols: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(1.0, 2.0, (rows, cols))


def compiled(fn, out_layouts, *args):
    f = dtc.compile(fn, in_layouts=(ROWS,) * len(args), out_layouts=out_layouts, verify=True)
    return f(*args), f.lower(*args).ir("final")


@pytest.mark.parametrize(("reduce", "fill"), [
    (np.sum, "sum"), (np.max, "max"), (np.min, "min"), (np.prod, "prod")])
@pytest.mark.parametrize("rows", [10, 5, 1])
def test_a_reduction_over_an_uneven_axis_masks_with_its_identity(reduce, fill, rows):
    a = inputs(rows)
    pending = dtc.Layout([U], MESH, partial={"x": fill})
    got, ir = compiled(lambda a: reduce(garbage(a), axis=0), pending, a)
    if rows > 1:  # a dim of 1 is a broadcast dim of elementwise ops: gathered, not masked
        assert f"fill = {fill}" in ir and ir.count("mask") == 1
    np.testing.assert_allclose(np.asarray(got), reduce(garbage(a), axis=0), rtol=1e-12)


def test_mean_divides_by_the_global_count():
    a = inputs()
    pending = dtc.Layout([U], MESH, partial={"x": "sum"})
    got, ir = compiled(lambda a: np.mean(garbage(a), axis=0), pending, a)
    assert "fill = sum" in ir and "{value = 10.0}" in ir
    np.testing.assert_allclose(np.asarray(got), np.mean(garbage(a), axis=0), rtol=1e-12)


def test_inf_and_nan_in_valid_elements_reduce_as_numpy_says():
    a = inputs()
    a[9, 0] = np.inf  # the only valid row of the last block
    a[4, 1] = np.nan
    for reduce, fill in ((np.sum, "sum"), (np.max, "max"), (np.min, "min")):
        pending = dtc.Layout([U], MESH, partial={"x": fill})
        got, _ = compiled(lambda a, r=reduce: r(garbage(a), axis=0), pending, a)
        np.testing.assert_array_equal(np.asarray(got), reduce(garbage(a), axis=0))


def test_a_contraction_over_an_uneven_dim_masks_both_operands_with_zeros():
    a, b = inputs(seed=1), inputs(seed=2)
    pending = dtc.Layout([U, U], MESH, partial={"x": "sum"})
    got, ir = compiled(lambda a, b: np.einsum("ij,ik->jk", garbage(a), garbage(b)), pending,
                       a, b)
    assert ir.count("fill = sum") == 2
    np.testing.assert_allclose(np.asarray(got), garbage(a).T @ garbage(b), rtol=1e-12)


def test_ops_that_keep_the_uneven_dim_need_no_mask():
    a = inputs()
    got, ir = compiled(lambda a: np.tanh(garbage(a)) @ np.ones((3, 2)) + 1.0, ROWS, a)
    assert "mask" not in ir and "f64[3/10,2] @ {x, -}" in ir
    np.testing.assert_allclose(np.asarray(got), np.tanh(garbage(a)) @ np.ones((3, 2)) + 1.0)
    for block, want in zip(dtc.unpack(got), np.array_split(np.asarray(got), [3, 6, 9])):
        np.testing.assert_array_equal(block, want)


@pytest.mark.parametrize("fn", [
    lambda x: np.exp(x - x.max(axis=0, keepdims=True))
    / np.exp(x - x.max(axis=0, keepdims=True)).sum(axis=0, keepdims=True),
    lambda x: np.log(np.exp(x - x.max(axis=0, keepdims=True)).sum(axis=0)) + x.max(axis=0),
    lambda x: x.var(axis=0),
    lambda x: (x - x.mean(axis=0)) / np.sqrt(x.var(axis=0) + 1e-5),
], ids=["softmax", "logsumexp", "var", "layernorm"])
@pytest.mark.parametrize("rows", [10, 5])
def test_normalizations_over_the_uneven_axis_match_numpy(fn, rows):
    a = inputs(rows)
    want = fn(garbage(a))
    for out in (None, dtc.Layout(["x", U], MESH) if want.ndim == 2 else None):
        got, _ = compiled(lambda a: fn(garbage(a)), out, a)
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-10)


def test_argmax_and_argmin_pick_the_first_valid_extreme():
    a = np.full((10, 3), 2.0)
    a[[2, 7], 0] = 5.0  # a tie: numpy picks row 2
    a[[9, 3], 1] = 1.0
    for arg in (np.argmax, np.argmin):
        got, _ = compiled(lambda a, f=arg: f(garbage(a), axis=0), None, a)
        np.testing.assert_array_equal(np.asarray(got), arg(garbage(a), axis=0))


def test_padded_indices_are_masked_before_a_lookup():
    """Valid ids are 7..11 after subtracting 7; the padding (zeros) becomes -7, out of range."""
    table = np.arange(15.0).reshape(5, 3)
    ids = np.array([7, 11, 8, 9, 10, 7, 11])
    f = dtc.compile(lambda t, i: np.take(t, i - 7, axis=0),
                    in_layouts=(dtc.Layout([U, U], MESH), dtc.Layout(["x"], MESH)), verify=True)
    assert "mask" in f.lower(table, ids).ir("final")
    np.testing.assert_array_equal(np.asarray(f(table, ids)), table[ids - 7])


@pytest.mark.parametrize(("fill", "dtype", "identity"), [
    ("sum", "f32", 0.0), ("prod", "f32", 1.0), ("max", "f32", -np.inf), ("min", "f32", np.inf),
    ("max", "i32", np.iinfo(np.int32).min), ("min", "u8", 255), ("max", "bool", False),
    ("min", "bool", True)])
def test_mask_selects_the_identity_into_padding_only(fill, dtype, identity):
    text = (f"mesh<x=4> local\nfunc @m(%a: {dtype}[2/5,3] @ {{x, -}}) -> "
            f"({dtype}[2/5,3] @ {{x, -}} pad({fill})) {{\n"
            f"  %0 = mask %a {{axes = [0], fill = {fill}}} : {dtype}[2/5,3] @ {{x, -}} "
            f"pad({fill})\n  return %0\n}}\n")
    module = parse_module(text)
    assert module.level is Level.LOCAL
    np_dtype = np.dtype({"f32": np.float32, "i32": np.int32, "u8": np.uint8, "bool": bool}[dtype])
    value = (np.arange(15).reshape(5, 3) % 2).astype(np_dtype)
    stacked = to_stacked(value, module.main.args[0].type.sharding, module.mesh)
    if np_dtype.kind == "f":
        stacked = np.where(stacked == 0, np.nan, stacked)  # NaN everywhere but odd values
    (out,) = SimulatedExecutor(module).run_stacked([stacked])
    # blocks of 2 rows: device 2 holds row 4 and one padded row, device 3 only padding
    np.testing.assert_array_equal(out[:2], stacked[:2])
    np.testing.assert_array_equal(out[2, 0], stacked[2, 0])
    assert (out[2, 1] == identity).all() and (out[3] == identity).all()


def test_an_integer_exponent_is_masked_so_its_padding_cannot_be_negative():
    """7 over 4: the last block has a row of padding, which ``e - 1`` makes -1 (zeros when
    placed): numpy refuses an integer to a negative integer power."""
    a, e = np.array([2, 3, 4, 5, 6, 7, 8]), np.array([1, 2, 1, 1, 2, 1, 1])
    layout = dtc.Layout(["x"], MESH)
    f = dtc.compile(lambda a, e: a ** (e - 1), in_layouts=(layout, layout), out_layouts=layout)
    np.testing.assert_array_equal(np.asarray(f(a, e)), a ** (e - 1))
    assert "mask" in f.lower(a, e).ir("final")


def test_an_index_out_of_range_is_named_on_the_users_axis():
    layouts = (ROWS, dtc.Layout(["x"], MESH))
    for axis, size in ((0, 5), (1, 3)):
        f = dtc.compile(lambda t, i, a=axis: np.take(t, i, axis=a), in_layouts=layouts)
        with pytest.raises(IndexError, match=f"index 5 is out of bounds for axis {axis} with "
                                             f"size {size}"):
            f(np.ones((5, 3)), np.array([0, 5, 1]))


def test_max_and_min_of_complex_numbers_over_an_uneven_axis():
    """numpy orders complex numbers by real part, then imaginary: the padding takes the
    complex infinity at the far end."""
    z = np.array([[1 + 2j, 3], [2, -1j], [5j, 1], [2 - 1j, 3 + 1j], [-1, 3 - 1j]])
    for reduce in (np.max, np.min):
        f = dtc.compile(lambda z, r=reduce: r(z, axis=0), in_layouts=dtc.Layout(["x", U], MESH))
        np.testing.assert_array_equal(np.asarray(f(z)), reduce(z, axis=0))


def test_narrow_indices_into_a_sharded_table_count_from_its_end():
    """-3 into 200 rows is row 197: the index is widened before the table's size is added."""
    f = dtc.compile(lambda t, i: np.take(t, i, axis=0),
                    in_layouts=(dtc.Layout(["x", U], MESH), dtc.Layout([U], MESH)))
    table = np.arange(200.0)[:, None]
    np.testing.assert_array_equal(np.asarray(f(table, np.array([1, -3], np.int8))),
                                  table[[1, 197]])
