"""The printed IR form and its round trip: print_module(parse_module(text)) == text."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dtensor_compiler.errors import Location
from dtensor_compiler.ir import opdef
from dtensor_compiler.ir.builder import Builder, make_op
from dtensor_compiler.ir.core import Function, Level, Module, Operation, Value
from dtensor_compiler.ir.opdef import InferContext
from dtensor_compiler.ir.ops.elementwise import BINARY_UFUNCS, UNARY_UFUNCS
from dtensor_compiler.ir.ops.reductions import REDUCTIONS
from dtensor_compiler.ir.parser import parse_module
from dtensor_compiler.ir.printer import INLINE_LIMIT, print_module
from dtensor_compiler.ir.reasons import Written
from dtensor_compiler.ir.sharding import MeshShape, ReduceOp, Sharding
from dtensor_compiler.ir.types import DTYPE_NAMES, TensorType, is_floating, numpy_dtype
from dtensor_compiler.ir.verifier import verify_module

MESH = MeshShape((("dp", 2), ("tp", 4)))
CTX = InferContext(MESH)

INT_OPERANDS = {"invert", "bitwise_and", "bitwise_or", "bitwise_xor", "left_shift",
                "right_shift", "gcd", "lcm"}
"""Ufuncs numpy defines on integers only; every other one is exercised on f32."""


def arg(name: str, dtype: str, shape: tuple[int, ...], sharding: Sharding | None = None
        ) -> Value:
    return Value(TensorType(dtype, shape, sharding), name_hint=name)


def every_op_module() -> Module:
    """One function that uses every registered op, with layouts and locations on some."""
    x = arg("x", "f32", (8, 16), Sharding.of("dp", None))
    n = arg("n", "i32", (8, 16), Sharding.of("dp", None))
    w = arg("w", "f32", (16, 4), Sharding.of(None, "tp"))
    p = arg("p", "f32", (8, 16), Sharding.of("dp", None, partial={"tp": "sum"}))
    g = arg("g", "f32", (16, 8), Sharding.of(("dp", "tp"), None))
    func = Function("every_op", [x, n, w, p, g])
    b = Builder(func, CTX)
    results = []
    for name in UNARY_UFUNCS:
        b.create(name, [n if name in INT_OPERANDS else x])
    for name in BINARY_UFUNCS:
        operands = [n, n] if name in INT_OPERANDS else [x, n] if name == "ldexp" else [x, x]
        b.create(name, operands, loc=Location("model.py", 10))
    for name in (d.name for d in REDUCTIONS.values()):
        b.create(name, [x], {"axes": (1,), "keepdims": name == "reduce_max"})
    cond = b.create("greater", [x, x])
    b.create("where", [cond, x, x])
    b.create("astype", [x], declared=TensorType("f64", (8, 16)))
    results.append(b.create("matmul", [x, w], sharding=Sharding.of("dp", "tp"),
                            loc=Location("model.py", 3)))
    b.create("einsum", [x, w], {"spec": "ij,jk->ik"})
    b.create("argmax", [x], {"axis": 1, "keepdims": True})
    b.create("argmin", [x], {"axis": 0, "keepdims": False})
    b.create("cumsum", [x], {"axis": 1})
    b.create("cumprod", [x], {"axis": 0})
    b.create("sort", [x], {"axis": 1})
    b.create("argsort", [x], {"axis": 0, "kind": "stable"})
    b.create("reverse", [x], {"axes": (0, 1)})
    c = b.create("constant", [], {"value": np.array([1 + 2j, -0.5j], dtype=np.complex64)},
                 declared=TensorType("c64", (2,)))
    b.create("real", [c])
    b.create("imag", [c])
    b.create("reshape", [x], declared=TensorType("f32", (4, 2, 16)))
    b.create("transpose", [x], {"perm": (1, 0)})
    b.create("broadcast_to", [x], declared=TensorType("f32", (3, 8, 16)))
    b.create("concatenate", [x, x, x], {"axis": 0})
    b.create("slice", [x], {"start": (0, 2), "stop": (8, 16), "step": (2, 3)})
    index = b.create("constant", [], {"value": np.array([3, 0, 7], dtype=np.int64)},
                     declared=TensorType("i64", (3,)))
    b.create("take", [x, index], {"axis": 0})
    b.create("scatter_add", [x, n], {"axis": 0, "size": 5})
    b.create("stop_gradient", [x])
    b.create("cotangent", [x, x])
    uneven = b.create("slice", [x], {"start": (0, 0), "stop": (7, 16), "step": (1, 1)},
                      sharding=Sharding.of(("dp", "tp"), None))
    b.create("mask", [uneven], {"axes": (0,), "fill": "max"},
             sharding=Sharding.of(("dp", "tp"), None))
    b.create("constant", [], {"value": np.arange(32, dtype=np.float32).reshape(4, 8) / 7},
             declared=TensorType("f32", (4, 8), Sharding.of("dp", "tp")))
    b.create("full", [], {"value": 0.5}, declared=TensorType("f32", (4, 4)))
    b.create("iota", [], {"dimension": 1}, declared=TensorType("i32", (4, 4)))
    b.create("relayout", [x], sharding=Sharding.of(None, "tp"))
    b.create("relayout_like", [x, g])
    b.create("all_gather", [x], {"mesh_dims": ("dp",), "axis": 0}, sharding=Sharding.of(None, None),
             why=Written("matmul needs %x replicated"))
    b.create("all_gather", [g], {"mesh_dims": ("tp",), "axis": 0}, sharding=Sharding.of("dp", None))
    results.append(b.create("all_reduce", [p], {"mesh_dims": ("tp",), "op": "sum"},
                            sharding=Sharding.of("dp", None), loc=Location("model.py", 4),
                            why=Written("contracted dim of %p is sharded on tp")))
    b.create("reduce_scatter", [p], {"mesh_dims": ("tp",), "op": "sum", "axis": 1},
             sharding=Sharding.of("dp", "tp"))
    b.create("all_to_all", [x], {"mesh_dims": ("dp",), "split_axis": 1, "concat_axis": 0},
             sharding=Sharding.of(None, "dp"))
    b.create("local_slice", [x], {"mesh_dims": ("tp",), "axis": 1},
             sharding=Sharding.of("dp", "tp"))
    b.create("make_partial", [x], {"mesh_dims": ("tp",), "op": "sum"},
             sharding=Sharding.of("dp", None, partial={"tp": "sum"}))
    b.create_op("save", [x, w], {"names": ("model/x", "w"), "prefix": "ck/run 1",
                                 "slices": ("", "32 4 8,16:-"), "as_bf16": ("w",)})
    b.create_op("save_shard", [x], {"device": 4, "names": ("model/x",), "prefix": "ck"},
                why=Written("device 4 writes model/x[4:8, 0:16] (256 bytes)"))
    b.create_op("barrier", [], {"name": "save_shard"})
    b.create_op("merge_index", [x, w], {"names": ("model/x", "w"), "prefix": "ck",
                                        "writers": (0, 4)})
    b.create("restore_shard", [], {"name": "w", "prefix": "ck"},
             declared=TensorType("bf16", (16, 4), Sharding.of(None, "tp")))
    b.create_op("test_print", [x], {"tag": 7})
    b.create_op("test_halves", [b.create("reshape", [x], declared=TensorType("f32", (128,)))])
    func.set_results(results)
    return Module(MESH, [func])


def assert_same_attr(a: object, b: object) -> None:
    """Equal attribute values; NaN equals NaN; arrays must match bit for bit."""
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray)
        assert (a.dtype, a.shape, a.tobytes()) == (b.dtype, b.shape, b.tobytes())
    elif isinstance(a, tuple):
        assert isinstance(b, tuple) and len(a) == len(b)
        for x, y in zip(a, b):
            assert_same_attr(x, y)
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b)
    else:
        assert type(a) is type(b) and a == b


def assert_same_module(a: Module, b: Module, locations: bool) -> None:
    assert (a.mesh, a.level) == (b.mesh, b.level)
    assert len(a.functions) == len(b.functions)
    for fa, fb in zip(a.functions, b.functions):
        assert fa.name == fb.name
        assert [v.type for v in fa.args] == [v.type for v in fb.args]
        assert [v.type for v in fa.results] == [v.type for v in fb.results]
        assert len(fa.ops) == len(fb.ops)
        for oa, ob in zip(fa.ops, fb.ops):
            assert (oa.name, oa.why) == (ob.name, ob.why)
            assert ob.loc == (oa.loc if locations else None)
            assert [r.type for r in oa.results] == [r.type for r in ob.results]
            assert oa.attrs.keys() == ob.attrs.keys()
            for key in oa.attrs:
                assert_same_attr(oa.attrs[key], ob.attrs[key])


def round_trip(module: Module, locations: bool = False) -> Module:
    text = print_module(module, locations=locations)
    parsed = parse_module(text)
    assert print_module(parsed, locations=locations) == text
    assert_same_module(module, parsed, locations)
    return parsed


# ---------------------------------------------------------------------------------------------


def test_the_printed_form_is_exact() -> None:
    x = arg("x", "f32", (512, 256), Sharding.of("dp", None))
    w = arg("w", "f32", (256, 1024), Sharding.of(None, "tp"))
    func = Function("mlp", [x, w])
    b = Builder(func, CTX)
    h = b.create("matmul", [x, w], sharding=Sharding.of("dp", "tp"), loc=Location("mlp.py", 7))
    t = b.create("tanh", [h], sharding=Sharding.of("dp", "tp"))
    s = b.create("reduce_sum", [t], {"axes": (1,), "keepdims": False},
                 sharding=Sharding.of("dp", partial={"tp": "sum"}))
    r = b.create("all_reduce", [s], {"mesh_dims": ("tp",), "op": "sum"},
                 sharding=Sharding.of("dp"), why=Written("reduced dim of %1 is sharded on tp"))
    func.set_results([r])
    module = Module(MESH, [func])
    assert print_module(module, locations=True) == (
        "mesh<dp=2, tp=4>\n"
        "func @mlp(%x: f32[512,256] @ {dp, -}, %w: f32[256,1024] @ {-, tp})"
        " -> (f32[512] @ {dp}) {\n"
        '  %0 = matmul %x, %w : f32[512,1024] @ {dp, tp} loc("mlp.py":7)\n'
        "  %1 = tanh %0 : f32[512,1024] @ {dp, tp}\n"
        "  %2 = reduce_sum %1 {axes = [1], keepdims = false} : f32[512] @ {dp} partial(tp:sum)\n"
        "  %3 = all_reduce %2 {mesh_dims = [tp], op = sum} : f32[512] @ {dp}"
        "  // why: reduced dim of %1 is sharded on tp\n"
        "  return %3\n"
        "}\n"
    )
    round_trip(module, locations=True)


@pytest.mark.parametrize("locations", [False, True])
def test_every_op_round_trips(locations: bool) -> None:
    module = every_op_module()
    # (kernel, which runs a body function of a localized module, round-trips in the fuse
    # pass's goldens)
    assert {op.name for op in module.main.ops} == {d.name for d in opdef.registered()
                                                   if d.calls is None}
    verify_module(module)
    parsed = round_trip(module, locations)
    verify_module(parsed)
    assert [a.name_hint for a in parsed.main.args] == ["x", "n", "w", "p", "g"]


def test_locations_are_printed_only_when_asked() -> None:
    text = print_module(every_op_module())
    assert "loc(" not in text
    parsed = parse_module(text)
    assert all(op.loc is None for op in parsed.main.ops)
    assert 'loc("model.py":3)' in print_module(every_op_module(), locations=True)


def test_multi_dim_shardings_and_partials_round_trip() -> None:
    mesh = MeshShape((("x", 2), ("y", 2), ("z", 2)))
    a = arg("a", "f32", (8, 4, 2), Sharding.of(("x", "y"), None, "z"))
    b_ = arg("b", "f64", (4, 4), Sharding.of(None, None, partial={"z": "max", "x": "sum"}))
    c = arg("c", "i64", (), Sharding.of(partial={"y": "min"}))
    d = arg("d", "bool", (6,), Sharding.of(("z", "y", "x")))
    func = Function("layouts", [a, b_, c, d], results=[a, b_, c, d])
    module = Module(mesh, [func])
    text = print_module(module)
    assert "%a: f32[8,4,2] @ {(x, y), -, z}" in text
    assert "%b: f64[4,4] @ {-, -} partial(x:sum, z:max)" in text
    assert "%c: i64[] @ {} partial(y:min)" in text
    assert "%d: bool[6] @ {(z, y, x)}" in text
    round_trip(module)


def test_localized_module_round_trips_with_global_constant_values() -> None:
    ctx = InferContext(MESH, Level.LOCAL)
    x = arg("x", "f32", (4, 16), Sharding.of("dp", None))
    odd = arg("odd", "f32", (3, 5), Sharding.of("dp", "tp"))
    func = Function("local", [x, odd])
    b = Builder(func, ctx)
    gathered = b.create("all_gather", [x], {"mesh_dims": ("dp",), "axis": 0},
                        sharding=Sharding.of(None, None))
    value = np.arange(64, dtype=np.float32).reshape(8, 8)
    const = b.create("constant", [], {"value": value},
                     declared=TensorType("f32", (4, 2), Sharding.of("dp", "tp")))
    func.set_results([gathered, const])
    module = Module(MESH, [func], level=Level.LOCAL)
    verify_module(module)
    text = print_module(module)
    assert text.startswith("mesh<dp=2, tp=4> local\n")
    assert "%0 = all_gather %x {mesh_dims = [dp], axis = 0} : f32[8,16] @ {-, -}" in text
    parsed = round_trip(module)
    assert parsed.level is Level.LOCAL
    np.testing.assert_array_equal(parsed.main.ops[1].attrs["value"], value)
    verify_module(parsed)


def special_values(dtype: np.dtype, size: int) -> np.ndarray:
    rng = np.random.default_rng(size)
    if dtype.kind == "b":
        return rng.integers(0, 2, size).astype(bool)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        values = rng.integers(info.min, info.max, size, dtype=dtype, endpoint=True)
        values[:2] = [info.min, info.max]
        return values
    values = rng.standard_normal(size).astype(dtype) * 1000
    if dtype.kind == "c":
        values = values + 1j * rng.standard_normal(size).astype(dtype)
    values[:4] = [np.inf, -np.inf, np.nan, -0.0]
    return values


CONSTANT_CASES = [
    (dtype, shape)
    for dtype in DTYPE_NAMES
    for shape in [(), (0, 3), (2, 3), (4, 4), (3, 7), (5, 2, 9)]
    if not dtype.startswith("c") or math.prod(shape) > INLINE_LIMIT  # complex: dense_hex only
]


@pytest.mark.parametrize(("dtype", "shape"), CONSTANT_CASES)
def test_constants_round_trip_bit_for_bit(dtype: str, shape: tuple[int, ...]) -> None:
    np_dtype = numpy_dtype(dtype)
    size = math.prod(shape)
    value = special_values(np_dtype, max(size, 4))[:size].reshape(shape)
    op = make_op("constant", [], {"value": value}, CTX, declared=TensorType(dtype, shape))
    func = Function("const", [], [op], [op.result])
    text = print_module(Module(MESH, [func]))
    negative_nan = size > 0 and is_floating(np_dtype) and bool(
        (np.isnan(value) & np.signbit(value)).any())
    assert ("dense_hex<" in text) == (size > INLINE_LIMIT or negative_nan)
    parsed = round_trip(Module(MESH, [func]))
    verify_module(parsed)


def test_special_floats_strings_and_nested_lists_in_attributes() -> None:
    x = arg("x", "f32", (4,))
    attrs = {
        "value": math.inf,
        "neg": -math.inf,
        "nan": math.nan,
        "zero": -0.0,
        "tiny": 5e-324,
        "huge": 1.5e300,
        "big": 2**70,
        "flag": False,
        "word": "sum",
        "keyword": "true",
        "also_keyword": "return",
        "quoted": 'a "b"\\c\nd',
        "unicode": "héllo ✓",
        "empty": "",
        "nested": ((1, 2), (), (3.5, (math.nan, "x")), ("dense",)),
    }
    op = Operation("full", [], [TensorType("f32", (4,))], attrs, Location('dir/my "file".py', 1),
                   why=Written("  spaces, // slashes and trailing   "))
    func = Function("attrs", [x], [op], [op.result])
    text = print_module(Module(MESH, [func]), locations=True)
    assert "value = inf" in text and "neg = -inf" in text and "nan = nan" in text
    assert "keyword = \"true\"" in text and "also_keyword = return" in text
    assert 'loc("dir/my \\"file\\".py":1)' in text
    assert text.split("\n")[2].endswith("// why:   spaces, // slashes and trailing   ")
    round_trip(Module(MESH, [func]), locations=True)


def test_argument_names_are_made_unique_and_kept() -> None:
    args = [arg("x", "f32", (2,)), arg("x", "f32", (2,)), arg("not valid", "f32", (2,)),
            Value(TensorType("f32", (2,)))]
    func = Function("names", args, results=args)
    text = print_module(Module(MESH, [func]))
    assert "func @names(%x: f32[2], %x_1: f32[2], %arg2: f32[2], %arg3: f32[2])" in text
    parsed = round_trip(Module(MESH, [func]))
    assert [a.name_hint for a in parsed.main.args] == ["x", "x_1", "arg2", "arg3"]


def test_ops_without_or_with_several_results_and_several_functions_round_trip() -> None:
    x = arg("x", "f32", (2,))
    first = Function("first", [x], [Operation("test_print", [x], [], {"tag": 1}),
                                    Operation("test_halves", [x],
                                              [TensorType("f32", (1,))] * 2, {},
                                              why=Written("split"))])
    first.set_results([x, *first.ops[1].results])
    second = Function("second", [], [])
    module = Module(MESH, [first, second])
    text = print_module(module, locations=True)
    assert ("  test_print %x {tag = 1}\n"
            "  %0, %1 = test_halves %x : f32[1], f32[1]  // why: split\n"
            "  return %x, %0, %1\n") in text
    assert "}\n\nfunc @second() -> () {\n  return\n}\n" in text
    parsed = round_trip(module, locations=True)
    verify_module(parsed)
    halves = parsed.functions[0].ops[1]
    assert parsed.functions[0].results[1:] == halves.results


def test_a_missing_attribute_with_a_default_is_filled_in_by_the_parser() -> None:
    module = parse_module("mesh<dp=2>\nfunc @f(%x: f32[4]) -> () {\n  test_print %x\n"
                          "  return\n}\n")
    assert module.main.ops[0].attrs == {"tag": 0}


# ---------------------------------------------------------------------------------------------
# property: random meshes, types, layouts and attribute values survive the round trip

MESH_DIMS = ("dp", "tp", "pp", "ep")


@st.composite
def meshes(draw: st.DrawFn) -> MeshShape:
    names = draw(st.lists(st.sampled_from(MESH_DIMS), min_size=1, max_size=3, unique=True))
    return MeshShape(tuple((n, draw(st.integers(1, 4))) for n in names))


@st.composite
def tensor_types(draw: st.DrawFn, mesh: MeshShape) -> TensorType:
    rank = draw(st.integers(0, 3))
    dtype = draw(st.sampled_from(DTYPE_NAMES))
    if not draw(st.booleans()):
        return TensorType(dtype, tuple(draw(st.integers(0, 9)) for _ in range(rank)))
    dims: list[tuple[str, ...]] = [() for _ in range(rank)]
    partial = {}
    for name in draw(st.permutations(mesh.names)):
        where = draw(st.integers(-2, rank - 1))
        if where >= 0:
            dims[where] += (name,)
        elif where == -1:
            partial[name] = draw(st.sampled_from(list(ReduceOp)))
    sharding = Sharding(tuple(dims), tuple(partial.items()))
    shape = tuple(draw(st.integers(1, 3)) * sharding.num_shards(i, mesh) for i in range(rank))
    return TensorType(dtype, shape, sharding)


scalars = (st.integers(-2**70, 2**70) | st.floats() | st.booleans() | st.text(max_size=8)
           | st.sampled_from(["sum", "dp", "inf", "nan", "true", "local", "dense_hex", "func"]))
attr_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3).map(tuple),
                           max_leaves=8)
line_text = st.text(st.characters(blacklist_characters="\n\r", blacklist_categories=("Cs",)),
                    max_size=20)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_random_types_and_attributes_round_trip(data: st.DataObject) -> None:
    mesh = data.draw(meshes())
    types = data.draw(st.lists(tensor_types(mesh), min_size=1, max_size=4))
    args = [Value(t, name_hint=f"a{i}") for i, t in enumerate(types)]
    ops = []
    for a in args:
        target = data.draw(tensor_types(mesh)).with_shape(a.type.shape)
        if target.sharding is not None and target.sharding.rank != a.type.rank:
            target = target.with_sharding(Sharding.replicated(a.type.rank))
        attrs = data.draw(st.dictionaries(st.sampled_from(["k", "mesh_dims", "z_1"]),
                                          attr_values, max_size=2))
        loc = Location(data.draw(line_text), data.draw(st.integers(0, 10**6)))
        ops.append(Operation("relayout", [a], [TensorType(a.type.dtype, a.type.shape,
                                                          target.sharding)],
                             attrs, loc, Written(why) if (why := data.draw(line_text)) else None))
    func = Function("random", args, ops, [op.result for op in ops])
    module = Module(mesh, [func], level=data.draw(st.sampled_from(list(Level))))
    round_trip(module, locations=True)
