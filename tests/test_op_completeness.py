"""Every op definition is complete: it says how it shards, whether it folds, and every backend
can run it. Adding an op that misses one of these fails here, not in some user's program."""

from __future__ import annotations

import inspect

import pytest

from dtensor_compiler.ir import opdef
from dtensor_compiler.ir.core import Level
from dtensor_compiler.ir.opdef import Barrier, Factors, LayoutHint
from dtensor_compiler.runtime.backends import backend_names, get_backend
from dtensor_compiler.runtime.executor import Communicator
from dtensor_compiler.runtime.stacked_comm import StackedCommunicator

DEFINITIONS = opdef.registered()


@pytest.mark.parametrize("definition", DEFINITIONS, ids=lambda d: d.name)
def test_every_op_declares_how_it_shards_and_whether_it_folds(definition: opdef.OpDef) -> None:
    assert isinstance(definition.sharding, (Factors, Barrier, LayoutHint)), definition.name
    if isinstance(definition.sharding, LayoutHint):  # removed before layouts are chosen
        assert definition.levels == {Level.GLOBAL}, definition.name
    assert type(definition.folds) is bool, definition.name
    if definition.folds:
        assert definition.pure and definition.results == 1, definition.name


@pytest.mark.parametrize("backend", backend_names())
def test_every_backend_has_a_kernel_for_every_op_it_can_meet(backend: str) -> None:
    kernels = get_backend(backend).kernels
    missing = [d.name for d in DEFINITIONS if Level.LOCAL in d.levels and d.name not in kernels
               and d.calls is None]  # an op running a function runs that function's ops
    assert not missing, f"the {backend} backend has no kernel for {missing}"


def test_folding_has_a_kernel_for_every_op_that_folds() -> None:
    numpy = get_backend("numpy").kernels
    assert not [d.name for d in DEFINITIONS if d.folds and d.name not in numpy]


def test_every_collective_is_a_communicator_method_and_the_simulated_mesh_has_it() -> None:
    protocol = {name for name, _ in inspect.getmembers(Communicator, inspect.isfunction)}
    for definition in opdef.collectives():
        assert definition.name in protocol, definition.name
        assert callable(getattr(StackedCommunicator, definition.name, None)), definition.name
        assert Barrier is type(definition.sharding), definition.name


def test_unknown_ops_are_not_definitions() -> None:
    with pytest.raises(KeyError, match="unknown op 'frobnicate'"):
        opdef.lookup("frobnicate")
    assert opdef.find("frobnicate") is None


def test_registration_rejects_incoherent_definitions() -> None:
    base = opdef.lookup("exp")
    with pytest.raises(ValueError, match="defined twice"):
        opdef.register(base)
    with pytest.raises(ValueError, match="must be a Barrier"):
        opdef.register(opdef.OpDef(name="bad_two_results", operands=1, results=2,
                                   infer=base.infer, sharding=base.sharding, folds=False))
    with pytest.raises(ValueError, match="effectful op must be a Barrier"):
        opdef.register(opdef.OpDef(name="bad_effect", operands=1, infer=base.infer,
                                   sharding=base.sharding, folds=False,
                                   effects=frozenset({opdef.Effect.WRITE})))
    assert opdef.find("bad_two_results") is None and opdef.find("bad_effect") is None
