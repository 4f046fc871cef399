"""The localize pass: per-device types and attributes, exact printed IR, and its errors."""

from __future__ import annotations

import numpy as np
import pytest
from ir_building import new_module

from dtensor_compiler.errors import PassError
from dtensor_compiler.ir.core import Level, Module
from dtensor_compiler.ir.printer import print_module
from dtensor_compiler.ir.sharding import MeshShape, Sharding
from dtensor_compiler.ir.types import TensorType
from dtensor_compiler.ir.verifier import verify_module
from dtensor_compiler.pass_manager import PassContext, PassManager
from dtensor_compiler.passes.localize import LocalizePass

MESH = MeshShape((("dp", 2), ("tp", 4)))
S = Sharding.of


def localize(module: Module) -> str:
    verify_module(module)
    LocalizePass().apply(module, PassContext())
    verify_module(module)
    return print_module(module)


def test_megatron_mlp_gets_per_device_shapes() -> None:
    module, b, (x, w1, w2) = new_module(MESH, {
        "x": ("f32", (512, 256), S("dp", None)),
        "w1": ("f32", (256, 1024), S(None, "tp")),
        "w2": ("f32", (1024, 256), S("tp", None)),
    })
    h = b.create("tanh", [b.create("matmul", [x, w1], sharding=S("dp", "tp"))],
                 sharding=S("dp", "tp"))
    y = b.create("matmul", [h, w2], sharding=S("dp", None, partial={"tp": "sum"}))
    out = b.create("all_reduce", [y], {"mesh_dims": ("tp",), "op": "sum"}, sharding=S("dp", None))
    module.main.set_results([out])
    assert localize(module) == (
        "mesh<dp=2, tp=4> local\n"
        "func @main(%x: f32[256,256] @ {dp, -}, %w1: f32[256,256] @ {-, tp}, "
        "%w2: f32[256,256] @ {tp, -}) -> (f32[256,256] @ {dp, -}) {\n"
        "  %0 = matmul %x, %w1 : f32[256,256] @ {dp, tp}\n"
        "  %1 = tanh %0 : f32[256,256] @ {dp, tp}\n"
        "  %2 = matmul %1, %w2 : f32[256,256] @ {dp, -} partial(tp:sum)\n"
        "  %3 = all_reduce %2 {mesh_dims = [tp], op = sum} : f32[256,256] @ {dp, -}\n"
        "  return %3\n"
        "}\n"
    )
    assert module.level is Level.LOCAL


def test_collectives_get_their_local_shapes() -> None:
    module, b, (x,) = new_module(MESH, {"x": ("f32", (16, 8), S(("dp", "tp"), None))})
    g = b.create("all_gather", [x], {"mesh_dims": ("tp",), "axis": 0}, sharding=S("dp", None))
    a = b.create("all_to_all", [g], {"mesh_dims": ("dp",), "split_axis": 1, "concat_axis": 0},
                 sharding=S(None, "dp"))
    s = b.create("local_slice", [a], {"mesh_dims": ("tp",), "axis": 0}, sharding=S("tp", "dp"))
    module.main.set_results([s])
    text = localize(module)
    assert "%0 = all_gather %x {mesh_dims = [tp], axis = 0} : f32[8,8] @ {dp, -}" in text
    assert ("%1 = all_to_all %0 {mesh_dims = [dp], split_axis = 1, concat_axis = 0} "
            ": f32[16,4] @ {-, dp}") in text
    assert "%2 = local_slice %1 {mesh_dims = [tp], axis = 0} : f32[4,4] @ {tp, dp}" in text


def test_slices_keep_unsharded_cuts_and_take_sharded_dims_whole() -> None:
    module, b, (x,) = new_module(MESH, {"x": ("f32", (16, 8), S(None, "tp"))})
    y = b.create("slice", [x], {"start": (2, 0), "stop": (14, 8), "step": (3, 1)},
                 sharding=S(None, "tp"))
    module.main.set_results([y])
    assert ("%0 = slice %x {start = [2, 0], stop = [14, 2], step = [3, 1]} : f32[4,2] @ {-, tp}"
            in localize(module))


def test_declared_types_become_local_and_constants_keep_their_global_value() -> None:
    module, b, (x,) = new_module(MESH, {"x": ("f32", (8, 12), S("dp", "tp"))})
    value = np.arange(96, dtype=np.float32).reshape(8, 12)
    t = TensorType("f32", (8, 12), S("dp", "tp"))
    c = b.create("constant", [], {"value": value}, declared=t)
    f = b.create("full", [], {"value": 1.5}, declared=t)
    i = b.create("iota", [], {"dimension": 1}, declared=t)
    r = b.create("reshape", [x], declared=TensorType("f32", (8, 4, 3), S("dp", "tp", None)))
    bc = b.create("broadcast_to", [r], declared=TensorType("f32", (6, 8, 4, 3),
                                                              S(None, "dp", "tp", None)))
    a = b.create("astype", [x], declared=TensorType("f64", (8, 12), S("dp", "tp")))
    module.main.set_results([c, f, i, bc, a])
    text = localize(module)
    assert "%0 = constant {value = dense_hex<" in text and ": f32[4,3] @ {dp, tp}" in text
    assert "%1 = full {value = 1.5} : f32[4,3] @ {dp, tp}" in text
    assert "%2 = iota {dimension = 1} : f32[4,3] @ {dp, tp}" in text
    assert "%3 = reshape %x : f32[4,1,3] @ {dp, tp, -}" in text
    assert "%4 = broadcast_to %3 : f32[6,4,1,3] @ {-, dp, tp, -}" in text
    assert "%5 = astype %x : f64[4,3] @ {dp, tp}" in text
    assert c.owner.attrs["value"] is value


def test_runs_as_a_registered_pipeline_pass() -> None:
    module, b, (x,) = new_module(MESH, {"x": ("f32", (8, 8), S("dp", "tp"))})
    module.main.set_results([b.create("exp", [x], sharding=S("dp", "tp"))])
    PassManager.parse("localize").run(module)
    assert module.main.args[0].type == TensorType("f32", (4, 2), S("dp", "tp"))


def _assert_rejected(module: Module, match: str) -> None:
    before = print_module(module)
    with pytest.raises(PassError, match=match):
        LocalizePass().apply(module, PassContext())
    assert print_module(module) == before and module.level is Level.GLOBAL


def test_rejects_a_relayout_left_in_the_module() -> None:
    module, b, (x,) = new_module(MESH, {"x": ("f32", (8, 8), S("dp", None))})
    module.main.set_results([b.create("relayout", [x], sharding=S(None, "tp"))])
    _assert_rejected(module, "relayout is left in the module but has no local form; run insert-collectives")


def test_uneven_shards_get_the_room_of_their_blocks_and_record_the_global_extent() -> None:
    module, b, (x,) = new_module(MESH, {"x": ("f32", (6, 8), S(("tp", "dp"), None))})
    module.main.set_results([b.create("exp", [x], sharding=S(("tp", "dp"), None))])
    assert localize(module) == (
        "mesh<dp=2, tp=4> local\n"
        "func @main(%x: f32[1/6,8] @ {(tp, dp), -}) -> (f32[1/6,8] @ {(tp, dp), -}) {\n"
        "  %0 = exp %x : f32[1/6,8] @ {(tp, dp), -}\n"
        "  return %0\n"
        "}\n")
    assert module.main.args[0].type.global_shape(MESH) == (6, 8)


def test_rejects_a_partial_slice_of_a_sharded_dim() -> None:
    module, b, (x,) = new_module(MESH, {"x": ("f32", (16, 8), S(None, "tp"))})
    y = b.create("slice", [x], {"start": (0, 0), "stop": (16, 4), "step": (1, 1)},
                 sharding=S(None, "tp"))
    module.main.set_results([y])
    _assert_rejected(module, r"slice 0:4:1 cuts dim 1, which is sharded over \['tp'\]")


def test_rejects_a_slice_that_changes_a_layout() -> None:
    module, b, (x,) = new_module(MESH, {"x": ("f32", (16, 8), S(None, None))})
    y = b.create("slice", [x], {"start": (0, 0), "stop": (8, 8), "step": (1, 1)},
                 sharding=S("tp", None))
    module.main.set_results([y])
    _assert_rejected(module, r"slice changes the layout of dim 0")


def test_rejects_values_without_layouts_and_bad_layouts() -> None:
    module, b, (x,) = new_module(MESH, {"x": ("f32", (8, 8), None)})
    module.main.set_results([b.create("exp", [x], sharding=S("dp", None))])
    _assert_rejected(module, "%x has no layout; run propagate-layouts first")
    module, b, (x,) = new_module(MESH, {"x": ("f32", (8, 8), S("dp", "dp"))})
    module.main.set_results([x])
    _assert_rejected(module, r"layout of %x \{dp, dp\}: mesh dim 'dp' is used more than once")


def test_rejects_a_module_that_is_already_local() -> None:
    module, b, (x,) = new_module(MESH, {"x": ("f32", (8, 8), S("dp", None))},
                                 level=Level.LOCAL)
    module.main.set_results([x])
    with pytest.raises(PassError, match="localize expects a global module, but this one is "
                                        "local"):
        PassManager([LocalizePass()]).run(module)
