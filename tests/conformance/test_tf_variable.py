"""Conformance port of the reference system's
`tensorflow/dtensor/python/tests/variable_test.py` (class ``DTensorVariableTest``) to the
numpy API of dtensor_compiler.

Translation of concepts:

* ``tf.Variable`` / ``d_variable.DVariable`` are `dtc.DVariable`; ``tf.function`` is
  `dtc.compile`; ``constant_op.constant`` is a numpy array.
* The reference's ``InvalidArgumentError`` for a bad argument is a ``ValueError`` here (every
  such error of ours, `dtc.LayoutError` included, is one); the reference's message pattern is
  asserted as a regex on ours.

Each test names the reference test it comes from.
"""

from __future__ import annotations

import numpy as np
import pytest

import dtensor_compiler as dtc

U = dtc.UNSHARDED
X = "x"


@pytest.fixture
def mesh() -> dtc.Mesh:
    """The reference fixture: a 1-D CPU mesh with dim x of size 2."""
    ids = np.arange(2)
    devices = [f"/job:localhost/replica:0/task:0/device:CPU:{i}" for i in range(2)]
    return dtc.Mesh([X], ids, ids.tolist(), devices)


def one_d_replicated(mesh: dtc.Mesh) -> dtc.Layout:
    return dtc.Layout([U], mesh)


def one_d_sharded(mesh: dtc.Mesh) -> dtc.Layout:
    return dtc.Layout([X], mesh)


def scalar_replicated(mesh: dtc.Mesh) -> dtc.Layout:
    return dtc.Layout.replicated(mesh, rank=0)


# -- construction errors -----------------------------------------------------------------------


# reference: variable_test.py DTensorVariableTest.testDVariableNoLayout
def test_dvariable_without_layout():
    with pytest.raises(ValueError,
                       match=r"Neither layout nor DTensor initial value are provided\."):
        dtc.DVariable(1.0)


# reference: variable_test.py DTensorVariableTest.testDVariableNoLayout (error class only)
def test_dvariable_without_layout_raises_value_error():
    with pytest.raises(ValueError):
        dtc.DVariable(1.0)


# reference: variable_test.py DTensorVariableTest.testDVariableConflictingLayout
def test_dvariable_conflicting_layout(mesh):
    a = dtc.relayout([1, 2, 3, 4], one_d_replicated(mesh))
    with pytest.raises(ValueError, match="Conflicting layout are provided"):
        dtc.DVariable(a, layout=one_d_sharded(mesh))


# reference: variable_test.py DTensorVariableTest.testDVariableConflictingLayout (class only)
def test_dvariable_conflicting_layout_raises_value_error(mesh):
    a = dtc.relayout([1, 2, 3, 4], one_d_replicated(mesh))
    with pytest.raises(ValueError):
        dtc.DVariable(a, layout=one_d_sharded(mesh))


# -- layouts of variables ----------------------------------------------------------------------


# reference: variable_test.py DTensorVariableTest.testVariable
def test_variable_keeps_the_initial_layout_through_relayout(mesh):
    layout = one_d_replicated(mesh)
    initial_value = dtc.relayout([1.0], layout)
    v = dtc.DVariable(initial_value)
    v = dtc.relayout(v, layout)
    dtc.check_layout(v, layout)


# reference: variable_test.py DTensorVariableTest.testVariableWithInitialValue
def test_variable_with_initial_value_and_assign_add(mesh):
    layout = one_d_replicated(mesh)
    a = dtc.relayout(np.array([1.0], dtype=np.float32), layout)
    v = dtc.DVariable(initial_value=a)
    dtc.check_layout(v, layout)
    to_add = dtc.relayout([1.0], layout)
    v = v.assign_add(to_add)
    dtc.check_layout(v, layout)


# reference: variable_test.py DTensorVariableTest.testVarAssignmentOpByOp
def test_scalar_variable_assignment_op_by_op(mesh):
    layout = scalar_replicated(mesh)
    v = dtc.relayout(np.array(1.0, dtype=np.float32), layout)
    w = dtc.DVariable(v)
    dtc.check_layout(w, layout)
    assert w.numpy() == 1.0
    w.assign_add(v)
    dtc.check_layout(w, layout)
    assert w.numpy() == 2.0


# reference: variable_test.py DTensorVariableTest.testVarInitOutsideTfFunction
@pytest.mark.xfail(strict=True, reason="deviation: in the reference a tf.function may assign a "
                   "DVariable it closes over (w.assign(x * 2); return w + x gives 3.0 and leaves "
                   "w == 2.0); inside dtc.compile, w.assign(traced) raises TraceError "
                   "'converting a traced array to a numpy array needs the traced array's data'")
def test_variable_created_outside_assigned_inside_compiled_function(mesh):
    layout = scalar_replicated(mesh)
    v = dtc.relayout(np.array(1.0, dtype=np.float32), layout)
    w = dtc.DVariable(v)

    @dtc.compile
    def assign_var(x):
        w.assign(x * 2)
        return w + x

    out = assign_var(np.array(1.0, dtype=np.float32))
    dtc.check_layout(w, layout)
    assert w.numpy() == 2.0
    assert out.numpy() == 3.0


# reference: variable_test.py DTensorVariableTest.testVarInitOutsideTfFunction (the same update
# written functionally: the compiled function returns the new value, the caller assigns it)
def test_variable_created_outside_updated_from_compiled_function(mesh):
    layout = scalar_replicated(mesh)
    v = dtc.relayout(np.array(1.0, dtype=np.float32), layout)
    w = dtc.DVariable(v)

    @dtc.compile
    def assign_var(w_value, x):
        new_w = x * 2
        return new_w, new_w + x

    new_w, out = assign_var(w, np.array(1.0, dtype=np.float32))
    w.assign(new_w)
    dtc.check_layout(w, layout)
    assert w.numpy() == 2.0
    assert out.numpy() == 3.0


# reference: variable_test.py DTensorVariableTest.testDVariableInitFromValues (the DVariable part)
def test_dvariable_init_from_int64_value(mesh):
    layout = scalar_replicated(mesh)
    dtensor_variable = dtc.DVariable(dtc.relayout(np.array(1, dtype=np.int64), layout))
    with dtc.default_mesh(mesh):  # the reference repeats the construction under the device scope
        dtensor_variable = dtc.DVariable(dtc.relayout(np.array(1, dtype=np.int64), layout))
    assert dtensor_variable.numpy() == 1
    assert dtensor_variable.dtype == np.int64
