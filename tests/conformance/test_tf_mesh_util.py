"""Mesh creation helpers and accelerator-system set-up, ported from the reference's own tests.

Source: TensorFlow ``tensorflow/dtensor/python/tests/mesh_util_test.py`` (classes
``MeshUtilTest`` and ``InitializedMeshUtilTest``). Every test names the reference case it comes
from and keeps its expected values. The reference fakes an initialized system and a second
client with mocks of its private modules; the equivalent here is a real single-client
`initialize_accelerator_system` (which needs no peers), and, for the two-client case, a faked
runtime record of `dtensor_compiler.multi_client`. The TPU-, GPU- and TF-context-only cases
are not ported.
"""

from __future__ import annotations

import pytest

import dtensor_compiler as dtc
from dtensor_compiler import multi_client
from dtensor_compiler.runtime import clients

_CLIENT_VARIABLES = ("DTENSOR_JOBS", "DTENSOR_CLIENT_ID", "DTENSOR_NUM_CLIENTS",
                     "DTENSOR_JOB_NAME", "RANK", "WORLD_SIZE", "DTC_NUM_DEVICES")


def _shut_down_if_initialized() -> None:
    try:
        dtc.shutdown_accelerator_system()
    except ValueError:
        pass


@pytest.fixture(autouse=True)
def single_client(monkeypatch):
    """One client, nothing initialized, before and after every test."""
    for name in _CLIENT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    _shut_down_if_initialized()
    yield
    _shut_down_if_initialized()


def initialize(num_cpus: int = 8) -> str:
    """The system initialized with `num_cpus` logical CPU devices on this (only) client."""
    return dtc.initialize_accelerator_system("CPU", num_logical_cpu_devices=num_cpus)


def local_cpu_count() -> int:
    """How many logical CPU devices this client lists (the reference's
    ``len(test_util.list_local_logical_devices("CPU"))``)."""
    return len(dtc.local_devices("CPU"))


# == MeshUtilTest ===============================================================================


def test_mesh_creation():
    # reference: mesh_util_test.py MeshUtilTest.test_mesh_creation
    mesh = dtc.create_mesh()
    count = len(dtc.local_devices(mesh.device_type()))
    assert mesh.num_local_devices() == count
    assert mesh.size == count


def test_mesh_creation_after_initialize():
    # reference: mesh_util_test.py MeshUtilTest.test_mesh_creation (with the logical device
    # count set explicitly, as the reference's harness does)
    initialize(4)
    mesh = dtc.create_mesh()
    assert local_cpu_count() == 4
    assert mesh.num_local_devices() == 4
    assert mesh.size == 4


def test_mesh_dict_creation():
    # reference: mesh_util_test.py MeshUtilTest.test_mesh_dict_creation
    count = local_cpu_count()
    mesh = dtc.create_mesh({"x": count, "y": 1}, device_type="CPU")
    assert mesh.num_local_devices() == len(dtc.local_devices(mesh.device_type()))
    assert list(mesh.dim_names) == ["x", "y"]
    assert mesh.size == count


def test_2d_mesh_creation_with_devices():
    # reference: mesh_util_test.py MeshUtilTest.test_tpu_2d_mesh_creation_with_devices (the
    # same call on CPU devices: create_mesh's handling of device names is type-independent)
    mesh = dtc.create_mesh([("x", 2), ("y", 1)], devices=["/device:cpu:0", "/device:cpu:1"])
    assert mesh.num_local_devices() == 2
    assert mesh.size == 2
    assert list(mesh.dim_names) == ["x", "y"]
    assert mesh.local_devices() == ["/job:localhost/replica:0/task:0/device:CPU:0",
                                    "/job:localhost/replica:0/task:0/device:CPU:1"]


def test_single_client_mesh_creation():
    # reference: mesh_util_test.py MeshUtilTest.test_single_client_mesh_creation
    initialize()
    count = local_cpu_count()
    mesh = dtc.create_distributed_mesh(mesh_name="single_client_1d_mesh",
                                       mesh_dims=[("x", count)])
    assert mesh.num_local_devices() == count
    assert mesh.size == count


def test_single_client_mesh_dict_creation():
    # reference: mesh_util_test.py MeshUtilTest.test_single_client_mesh_dict_creation
    initialize()
    count = local_cpu_count()
    mesh = dtc.create_distributed_mesh(mesh_name="single_client_1d_mesh",
                                       mesh_dims={"x": count, "y": 1})
    assert mesh.num_local_devices() == count
    assert list(mesh.dim_names) == ["x", "y"]
    assert mesh.size == count


def test_single_client_mesh_with_local_devices():
    # reference: mesh_util_test.py MeshUtilTest.test_single_client_mesh_with_local_devices
    initialize()
    mesh = dtc.create_distributed_mesh(mesh_name="single_client_1d_mesh",
                                       mesh_dims=[("x", 1)], local_devices=["CPU:0"])
    assert mesh.num_local_devices() == 1
    assert mesh.size == 1


def test_create_distributed_mesh_requires_initialize():
    # reference: mesh_util_test.py MeshUtilTest.test_create_distributed_mesh_requires_initialize
    with pytest.raises(ValueError, match="Accelerators are uninitialized"):
        dtc.create_distributed_mesh(mesh_name="single_client_1d_mesh",
                                    mesh_dims=[("x", 1)],
                                    local_devices=["/job:localhost/replica:0/task:0/device:CPU:0"])


def test_single_client_mesh_creation_wrong_shape():
    # reference: mesh_util_test.py MeshUtilTest.test_single_client_mesh_creation_wrong_shape
    initialize()
    count = local_cpu_count()
    with pytest.raises(ValueError, match="must be equal to total size of the mesh"):
        dtc.create_distributed_mesh(mesh_name="single_client_1d_mesh",
                                    mesh_dims=[("x", count * 2)])


def test_single_client_mesh_creation_using_fewer_devices():
    # reference: mesh_util_test.py
    # MeshUtilTest.test_single_client_mesh_creation_using_fewer_devices
    initialize(4)
    for _ in range(2):
        mesh = dtc.create_distributed_mesh(mesh_name="single_client_1d_mesh",
                                           mesh_dims=[("x", 2)],
                                           local_devices=["CPU:0", "CPU:1"])
        assert mesh.num_local_devices() == 2
        assert mesh.size == 2


def test_single_client_mesh_creation_using_fewer_full_device_names():
    # reference: mesh_util_test.py
    # MeshUtilTest.test_single_client_mesh_creation_using_fewer_devices (with the devices
    # named in full, which separates "fewer devices than initialized" from name parsing)
    initialize(4)
    names = ["/job:localhost/replica:0/task:0/device:CPU:0",
             "/job:localhost/replica:0/task:0/device:CPU:1"]
    for _ in range(2):
        mesh = dtc.create_distributed_mesh(mesh_name="single_client_1d_mesh",
                                           mesh_dims=[("x", 2)], local_devices=names)
        assert mesh.num_local_devices() == 2
        assert mesh.size == 2


def test_single_client_mesh_creation_with_xla_spmd_raises_error():
    # reference: mesh_util_test.py
    # MeshUtilTest.test_single_client_mesh_creation_with_xla_spmd_raises_error
    initialize(4)
    with pytest.raises(ValueError, match="XLA SPMD is not currently not supported for"):
        dtc.create_distributed_mesh(mesh_name="single_client_mesh", mesh_dims=[("x", 2)],
                                    local_devices=["CPU:0", "CPU:1"], use_xla_spmd=True)


def test_single_client_mesh_creation_with_xla_spmd_full_names_raises_error():
    # reference: mesh_util_test.py
    # MeshUtilTest.test_single_client_mesh_creation_with_xla_spmd_raises_error (devices named
    # in full, so only the use_xla_spmd check is exercised)
    initialize(4)
    names = ["/job:localhost/replica:0/task:0/device:CPU:0",
             "/job:localhost/replica:0/task:0/device:CPU:1"]
    with pytest.raises(ValueError, match="XLA SPMD is not currently not supported for"):
        dtc.create_distributed_mesh(mesh_name="single_client_mesh", mesh_dims=[("x", 2)],
                                    local_devices=names, use_xla_spmd=True)


def _fake_two_clients(monkeypatch, client: int) -> None:
    """This process as client `client` of two initialized clients of 2 CPUs each, without
    peers (the reference mocks num_clients, client_id and is_initialized the same way)."""
    env = multi_client._Environment.read({"DTENSOR_JOBS": "localhost:1,localhost:2",
                                          "DTENSOR_CLIENT_ID": str(client)})
    runtime = multi_client._Runtime(env, "CPU", clients.Clients(client, 2, 2))
    monkeypatch.setattr(multi_client, "_RUNTIME", runtime)


def test_multi_client_mesh_creation(monkeypatch):
    # reference: mesh_util_test.py MeshUtilTest.test_multi_client_mesh_creation
    _fake_two_clients(monkeypatch, 0)
    mesh_1 = dtc.create_distributed_mesh(mesh_name="multi_client_1d_mesh_1",
                                         mesh_dims=[("x", 4)], local_devices=["CPU:0", "CPU:1"])
    assert mesh_1.num_local_devices() == 2
    assert mesh_1.size == 4
    _fake_two_clients(monkeypatch, 1)
    mesh_2 = dtc.create_distributed_mesh(mesh_name="multi_client_1d_mesh_2",
                                         mesh_dims=[("x", 4)], local_devices=["CPU:2", "CPU:3"])
    assert mesh_2.num_local_devices() == 2
    assert mesh_2.size == 4
    monkeypatch.setattr(multi_client, "_RUNTIME", None)


# == InitializedMeshUtilTest ====================================================================


def test_initialize_accelerator_system():
    # reference: mesh_util_test.py InitializedMeshUtilTest.test_initialize_accelerator_system
    # (the default type is the preferred one, CPU on a platform of CPUs only)
    initialize()
    dtc.shutdown_accelerator_system()
    assert dtc.initialize_accelerator_system("CPU") == "CPU"
    dtc.shutdown_accelerator_system()
    assert dtc.initialize_accelerator_system() == "CPU"


def test_initialize_accelerator_system_default_is_preferred_type():
    # reference: mesh_util_test.py InitializedMeshUtilTest.test_initialize_accelerator_system
    # (its second half, which compares with config.preferred_device_type())
    assert dtc.initialize_accelerator_system() == dtc.preferred_device_type()


def test_initialize_with_manual_logical_cpu_devices(monkeypatch):
    # reference: mesh_util_test.py
    # InitializedMeshUtilTest.test_initialize_with_manual_logical_cpu_devices (the CPU case).
    # TensorFlow starts with one logical CPU; the simulated host has DTC_NUM_DEVICES of them.
    monkeypatch.setenv("DTC_NUM_DEVICES", "1")
    assert local_cpu_count() == 1
    dtc.initialize_accelerator_system("CPU", num_logical_cpu_devices=32)
    assert local_cpu_count() == 32
    assert dtc.num_local_devices("CPU") == 32


def test_shutdown_accelerator_system():
    # reference: mesh_util_test.py InitializedMeshUtilTest.test_shutdown_accelerator_system
    # (without its is_initialized() checks: that function is not public API)
    initialize()
    dtc.shutdown_accelerator_system()
    with pytest.raises(ValueError, match="not initialized"):
        dtc.shutdown_accelerator_system()


def test_mesh_barrier():
    # reference: mesh_util_test.py InitializedMeshUtilTest.test_mesh_barrier (the reference
    # only checks that both calls return)
    initialize()
    count = local_cpu_count()
    mesh = dtc.create_mesh([("dim", count)], device_type="CPU")
    assert mesh.size == count
    dtc.barrier(mesh, "Name")
    dtc.barrier(mesh)
