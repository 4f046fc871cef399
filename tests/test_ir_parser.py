"""Parsing IR text: what each construct becomes, and where malformed text is reported."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dtensor_compiler.errors import IRParseError, Location
from dtensor_compiler.ir.core import Level
from dtensor_compiler.ir.parser import parse_module
from dtensor_compiler.ir.printer import print_module
from dtensor_compiler.ir.reasons import Written
from dtensor_compiler.ir.sharding import MeshShape, ReduceOp, Sharding
from dtensor_compiler.ir.types import TensorType

MLP = """\
mesh<dp=2, tp=4>
func @mlp(%x: f32[512,256] @ {dp, -}, %w1: f32[256,1024] @ {-, tp}) -> (f32[512,1024] @ {dp, -}) {
  %0 = matmul %x, %w1 : f32[512,1024] @ {dp, tp} loc("mlp.py":7)
  %1 = tanh %0 : f32[512,1024] @ {dp, tp}
  %2 = all_gather %1 {mesh_dims = [tp], axis = 1} : f32[512,1024] @ {dp, -}  // why: out_layouts[0]
  return %2
}
"""


def test_parses_values_types_attributes_locations_and_explanations() -> None:
    module = parse_module(MLP)
    assert module.mesh == MeshShape((("dp", 2), ("tp", 4)))
    assert module.level is Level.GLOBAL
    func = module.main
    x, w1 = func.args
    assert (func.name, x.name_hint, w1.name_hint) == ("mlp", "x", "w1")
    assert x.type == TensorType("f32", (512, 256), Sharding.of("dp", None))
    matmul, tanh, gather = func.ops
    assert (matmul.name, matmul.operands, matmul.loc) == ("matmul", (x, w1),
                                                          Location("mlp.py", 7))
    assert matmul.type.sharding == Sharding.of("dp", "tp")
    assert tanh.operands == (matmul.result,) and tanh.loc is None and tanh.why is None
    assert gather.attrs == {"mesh_dims": ("tp",), "axis": 1}
    assert gather.why == Written("out_layouts[0]")
    assert func.results == (gather.result,)
    assert x.uses == [(matmul, 0)] and matmul.result.uses == [(tanh, 0)]


def test_attribute_values() -> None:
    module = parse_module(
        "mesh<dp=2>\n"
        "func @f() -> (f32[2,2]) {\n"
        '  %c = constant {value = dense<[[1.5, -inf], [nan, 2e-05]]>, a = [1, [-2, 3.0], []],'
        ' b = true, c = false, d = sum, e = "x y\\n", f = -1.0e+20, g = inf, h = "true"}'
        " : f32[2,2]\n"
        "  return %c\n"
        "}\n")
    attrs = module.main.ops[0].attrs
    value = attrs["value"]
    assert isinstance(value, np.ndarray) and value.dtype == np.float32
    np.testing.assert_array_equal(value, np.array([[1.5, -np.inf], [np.nan, 2e-05]], np.float32))
    assert attrs["a"] == (1, (-2, 3.0), ())
    assert type(attrs["a"][0]) is int and type(attrs["a"][1][1]) is float
    assert (attrs["b"], attrs["c"], attrs["d"], attrs["e"]) == (True, False, "sum", "x y\n")
    assert attrs["f"] == -1e20 and attrs["g"] == math.inf and attrs["h"] == "true"


def test_dense_values_take_the_result_dtype_and_shape() -> None:
    module = parse_module(
        "mesh<dp=2, tp=2> local\n"
        "func @f() -> () {\n"
        "  %0 = constant {value = dense<[[1, 2], [3, 4]]>} : i8[2,2]\n"
        "  %1 = constant {value = dense<[]>} : f64[0,3]\n"
        "  %2 = constant {value = dense<true>} : bool[]\n"
        '  %3 = constant {value = dense_hex<"0100020003000400">} : u16[1,2] @ {dp, -}\n'
        "  return\n"
        "}\n")
    values = [op.attrs["value"] for op in module.main.ops]
    assert [(v.dtype, v.shape) for v in values] == [
        (np.int8, (2, 2)), (np.float64, (0, 3)), (np.bool_, ()), (np.uint16, (2, 2))]
    np.testing.assert_array_equal(values[3], [[1, 2], [3, 4]])
    assert module.main.ops[3].type.shape == (1, 2)


def test_comments_and_blank_lines_are_skipped() -> None:
    body = (MLP.replace("  return", "\n  // a note\n\n  return")
            .replace("{dp, tp}\n", "{dp, tp}  // trailing note\n", 1))
    text = "// RUN: dtc opt %s\n// CHECK: tanh\n" + body
    module = parse_module(text)
    assert print_module(module, locations=True) == MLP
    assert module.main.ops[1].why is None


def test_a_function_without_arguments_or_results() -> None:
    module = parse_module("mesh<>\nfunc @empty() -> () {\n  return\n}\n")
    assert module.mesh == MeshShape(())
    assert (module.main.args, module.main.ops, module.main.results) == ([], [], ())


def error_at(text: str) -> IRParseError:
    with pytest.raises(IRParseError) as info:
        parse_module(text)
    return info.value


@pytest.mark.parametrize(("old", "new", "line", "column", "message"), [
    ("= tanh", "= tan_h", 4, 8, "unknown op 'tan_h'"),
    ("tanh %0", "tanh %9", 4, 13, "value %9 is used before it is defined"),
    ("%1 = tanh", "%0 = tanh", 4, 3, "value %0 is defined twice"),
    ("%1 = tanh %0 : f32[512,1024] @ {dp, tp}",
     "%1,  %1 = tanh %0 : f32[512,1024] @ {dp, tp}, f32[512,1024] @ {dp, tp}", 4, 8,
     "value %1 is defined twice"),
    ("%1 = tanh %0 : f32[512,1024] @ {dp, tp}", "%1 = tanh %0 : f32[512,1024] @ {dp, tp},", 4, 42,
     "unexpected ','"),
    ('loc("mlp.py":7)', 'loc("mlp.py":seven)', 3, 50,
     "unexpected name 'loc', expected"),
    ("%w1: f32", "%x: f32", 2, 39, "value %x is defined twice"),
    ("-> (f32[512,1024] @ {dp, -})", "-> ()", 6, 3, "@mlp declares 0 results but returns 1"),
    ("-> (f32[512,1024] @ {dp, -})", "-> (f32[512,1024])", 6, 10,
     "%2 has type f32[512,1024] @ {dp, -} but @mlp declares f32[512,1024]"),
    ("%x: f32[512,256]", "%x: f31[512,256]", 2, 15, "unknown dtype 'f31'"),
    ("f32[512,256] @ {dp, -}", "f32[512,256] @ {dp}", 2, 15,
     "layout {dp} has rank 1 but the shape [512, 256] has rank 2"),
    ("%0 = matmul", "%0 matmul", 3, 3, "unexpected %value '%0', expected name, results like"),
    ("tanh %0 : f32", "tanh %0 f32", 4, 16,
     "unexpected tensor type like f32[4,8] 'f32[512,1024] @ {dp, tp}', expected"),
    ("tanh %0 :", "tanh %0 ; :", 4, 16, "unexpected character ';'"),
    ("tanh %0 : f32[512,1024] @ {dp, tp}", "tanh %0", 4, 15, "unexpected line break, expected"),
    ("tanh %0 : f32[512,1024] @", "tanh %0 : f32[512,1024] :", 4, 32,
     "unexpected ':', expected"),
    ("axis = 1", "axis = 1, axis = 2", 5, 51, "attribute 'axis' is given twice"),
    ("mesh<dp=2, tp=4>", "mesh<dp=2, dp=4>", 1, 12, "mesh dim 'dp' appears twice"),
    ("mesh<dp=2, tp=4>", "mesh<dp=2, tp=0>", 1, 15, "mesh dim 'tp' must have a positive size"),
    ("func @mlp", "func mlp", 2, 6, "unexpected name 'mlp', expected '@'"),
    ('loc("mlp.py":7)', 'loc("ml\\qp.py":7)', 3, 54, 'bad string "ml\\qp.py": Invalid \\escape'),
    ("axis = 1", 'axis = 1, note = "a\tb"', 5, 58, "Invalid control character"),
    ("axis = 1", "axis = 1, deep = " + "[" * 40 + "]" * 40, 5, 51,
     "attribute 'deep' nests lists deeper than 32"),
])
def test_malformed_text_is_reported_at_its_line_and_column(
        old: str, new: str, line: int, column: int, message: str) -> None:
    assert old in MLP
    text = MLP.replace(old, new, 1)
    error = error_at(text)
    assert (error.line, error.column) == (line, column)
    assert message in str(error)
    assert error.context == text.split("\n")[line - 1]
    assert f"\n  {error.context}\n  {' ' * (column - 1)}^" in str(error)


def test_text_written_with_crlf_line_ends_is_the_same_module() -> None:
    crlf = parse_module(MLP.replace("\n", "\r\n"))
    assert print_module(crlf, locations=True) == print_module(parse_module(MLP), locations=True)
    assert crlf.main.ops[2].why == Written("out_layouts[0]")


def test_end_of_text_is_reported_after_the_last_line() -> None:
    error = error_at(MLP[:-3])
    assert (error.line, error.column) == (6, 12)
    assert "unexpected end of the text, expected" in str(error)
    assert (error_at("").line, error_at("").column) == (1, 1)


@pytest.mark.parametrize(("attr", "result_type", "message"), [
    ('dense_hex<"0001">', "f32[2]", "dense_hex holds 2 bytes, float32[2] needs 8"),
    ('dense_hex<"zz">', "f32[2]", "dense_hex data is not hexadecimal"),
    ("dense<[1.5, nan]>", "i32[2]", "dense value does not fit i32"),
    ("dense<[[1], [2, 3]]>", "i32[2]", "dense value does not fit i32"),
    ("dense<[1, 300]>", "i8[2]", "dense value does not fit i8"),
    ('dense_hex<"00">', "u8[1] @ {zz}", "mesh dim 'zz' is not in mesh<dp=2>"),
])
def test_bad_dense_values_are_reported_at_the_value(attr: str, result_type: str,
                                                    message: str) -> None:
    text = ("mesh<dp=2> local\nfunc @f() -> () {\n"
            f"  %0 = constant {{value = {attr}}} : {result_type}\n  return\n}}\n")
    error = error_at(text)
    assert (error.line, error.column) == (3, 26)
    assert message in str(error)


def test_a_dense_value_needs_a_result_type() -> None:
    error = error_at("mesh<>\nfunc @f() -> () {\n  add {v = dense<1>}\n  return\n}\n")
    assert (error.line, error.column, error.context) == (3, 12, "  add {v = dense<1>}")
    assert "a dense attribute needs the op's one result type" in str(error)


def test_a_function_name_is_defined_once() -> None:
    twice = "mesh<>\nfunc @f() -> () {\n  return\n}\n"
    error = error_at(twice + "\n" + twice[len("mesh<>\n"):])
    assert (error.line, error.column) == (6, 7)
    assert "function @f is defined twice" in str(error)


def test_operands_from_another_function_are_undefined() -> None:
    text = MLP + "\nfunc @g() -> () {\n  %0 = tanh %x : f32[512,256]\n  return\n}\n"
    error = error_at(text)
    assert (error.line, error.column) == (10, 13)
    assert "value %x is used before it is defined" in str(error)


def test_an_unknown_reduction_is_reported_where_it_is_written() -> None:
    error = error_at("mesh<dp=2>\nfunc @f(%x: f32[4] @ {-} partial(dp:avg)) -> () {\n  return\n}\n")
    assert (error.line, error.column) == (2, 37)
    assert "unknown reduction 'avg'; reductions are sum, max, min, prod" in str(error)


def test_attributes_get_their_kinds_and_a_wrong_kind_is_reported() -> None:
    module = parse_module("mesh<dp=2>\nfunc @f(%x: f32[4] @ {-} partial(dp:sum)) -> () {\n"
                          "  %0 = all_reduce %x {mesh_dims = [dp], op = sum} : f32[4] @ {-}\n"
                          "  return\n}\n")
    assert module.main.ops[0].attrs == {"mesh_dims": ("dp",), "op": ReduceOp.SUM}
    assert type(module.main.ops[0].attrs["op"]) is ReduceOp
    error = error_at("mesh<dp=2>\nfunc @f(%x: f32[4]) -> () {\n"
                     "  %0 = reduce_sum %x {axes = 0, keepdims = false} : f32[]\n  return\n}\n")
    assert (error.line, error.column) == (3, 23)
    assert "reduce_sum: attribute 'axes': expected a list of ints, got int 0" in str(error)


def test_the_entry_function_is_named_in_the_header_and_round_trips() -> None:
    text = ("mesh<dp=2> entry @second\nfunc @first() -> () {\n  return\n}\n\n"
            "func @second(%x: f32[4]) -> (f32[4]) {\n  return %x\n}\n")
    module = parse_module(text)
    assert module.entry == "second" and module.main.name == "second"
    assert print_module(module) == text
    error = error_at(text.replace("entry @second", "entry @third"))
    assert (error.line, error.column) == (1, 19)
    assert "the entry @third is not defined" in str(error)
    unnamed = parse_module(text.replace(" entry @second", ""))
    with pytest.raises(KeyError, match="2 functions and names no entry"):
        _ = unnamed.main


def _transformer_ir(layers: int) -> str:
    """The final (localized) IR of an `layers`-layer transformer from examples/transformer.py."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    import transformer

    import dtensor_compiler as dtc

    mesh = dtc.create_mesh([("dp", 2), ("tp", 4)])
    in_layouts, out_layout = transformer.layouts(mesh, layers)
    f = dtc.compile(transformer.make_forward(layers, 2), in_layouts=in_layouts,
                    out_layouts=out_layout)
    return print_module(f.lower(*transformer.specs(2, 4, 8, 16, layers)).module)


def test_a_multi_layer_module_round_trips_and_errors_deep_in_it_keep_line_and_column() -> None:
    text = _transformer_ir(3)
    assert print_module(parse_module(text)) == text
    lines = text.split("\n")
    n = next(i for i, line in enumerate(lines) if " = matmul %" in line and i > len(lines) // 2)
    line = lines[n]
    at = line.index(" @ {") + len(" @ {")
    broken = line[:at] + "zz:" + line[at:]
    error = error_at("\n".join(lines[:n] + [broken] + lines[n + 1:]))
    assert (error.line, error.column, error.context) == (n + 1, at + 3, broken)
    assert "unexpected ':', expected" in str(error)
    operand = line.index("%", line.index("matmul"))
    undefined = line[:operand] + "%nowhere" + line[line.index(",", operand):]
    error = error_at("\n".join(lines[:n] + [undefined] + lines[n + 1:]))
    assert (error.line, error.column) == (n + 1, operand + 1)
    assert "value %nowhere is used before it is defined" in str(error)


def test_the_package_exports_the_text_form() -> None:
    from dtensor_compiler import ir

    assert (ir.parse_module, ir.print_module) == (parse_module, print_module)
