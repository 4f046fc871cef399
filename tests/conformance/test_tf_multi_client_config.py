"""The single-process part of the reference's multi_client_test.py: the config functions under
the environment a client of the reference's test is started with (DTENSOR_JOBS,
DTENSOR_CLIENT_ID, DTENSOR_JOB_NAME; DTENSOR_NUM_CLIENTS, the legacy count), the local mode
(its --num_clients=0 run), invalid client ids, and calls made before
initialize_accelerator_system. Expected values follow the reference's config.py,
accelerator_util.py and mesh_util.py, which that test runs under."""

from __future__ import annotations

import numpy as np
import pytest

import dtensor_compiler as dtc

_DT_VARS = ("DTENSOR_JOBS", "DTENSOR_CLIENT_ID", "DTENSOR_NUM_CLIENTS", "DTENSOR_JOB_NAME",
            "DTENSOR_ENABLE_HEARTBEAT", "WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT",
            "LOCAL_RANK")

# the reference's run_client: zero-padded ports, sorted in reverse on purpose
_PORTS = sorted([23456, 34567], reverse=True)
_JOBS = [f"localhost:{port:06d}" for port in _PORTS]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in _DT_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def initialized():
    """initialize_accelerator_system for a test, shut down after it whatever happens."""
    started = []

    def init(**kwargs):
        out = dtc.initialize_accelerator_system(**kwargs)
        started.append(True)
        return out

    yield init
    if started:
        dtc.shutdown_accelerator_system()


def _as_client(monkeypatch, idx: int, jobs=_JOBS, job_name: str | None = "worker") -> None:
    """The environment run_client sets for client `idx` (nothing is joined here)."""
    monkeypatch.setenv("DTENSOR_CLIENT_ID", str(idx))
    if job_name is not None:
        monkeypatch.setenv("DTENSOR_JOB_NAME", job_name)
    monkeypatch.setenv("DTENSOR_JOBS", ",".join(jobs))


# -- local mode -------------------------------------------------------------------------------


def test_local_mode_defaults():
    # reference: multi_client_test.py run_client (with --num_clients=0 no DTENSOR_* variable
    # is set) and config.py: every config function works before initialization
    assert dtc.jobs() == []
    assert dtc.num_clients() == 1
    assert dtc.client_id() == 0
    assert dtc.job_name() == "localhost"
    assert dtc.full_job_name() == "localhost/replica:0/task:0"
    assert dtc.full_job_name(task_id=0) == "localhost/replica:0/task:0"
    assert dtc.heartbeat_enabled() is True
    n = dtc.num_local_devices("CPU")
    assert [str(d) for d in dtc.local_devices("CPU")] == [
        f"/job:localhost/replica:0/task:0/device:CPU:{i}" for i in range(n)]
    assert dtc.num_global_devices("CPU") == n


def test_local_mode_other_task_id():
    # reference: config.py full_job_name: in local runs only task 0 exists
    with pytest.raises(ValueError, match="Unexpected task ID"):
        dtc.full_job_name(task_id=1)


def test_local_mode_empty_jobs(monkeypatch):
    # reference: config.py jobs() / is_local_mode(): an empty DTENSOR_JOBS is local mode
    monkeypatch.setenv("DTENSOR_JOBS", "")
    assert dtc.jobs() == []
    assert dtc.num_clients() == 1
    assert dtc.job_name() == "localhost"


def test_local_mode_job_name(monkeypatch):
    # reference: config.py job_name(): DTENSOR_JOB_NAME wins over the default
    monkeypatch.setenv("DTENSOR_JOB_NAME", "trainer")
    assert dtc.job_name() == "trainer"
    assert dtc.full_job_name() == "trainer/replica:0/task:0"
    assert str(dtc.local_devices("CPU")[0]) == "/job:trainer/replica:0/task:0/device:CPU:0"


def test_local_devices_unknown_type():
    # reference: config.py local_devices(): only CPU, GPU and TPU
    with pytest.raises(ValueError):
        dtc.local_devices("XPU")


def test_local_mode_mesh_and_copy_to_mesh(initialized):
    # reference: multi_client_test.py DTensorMNISTTest.setUp, test_copy_to_mesh and tearDown,
    # in local mode with --num_devices=4 and --model_dim_size=4
    assert initialized(device_type="CPU", num_logical_cpu_devices=4) == "CPU"
    local_devices = dtc.local_devices("CPU")
    num_devices = len(local_devices)
    assert num_devices == 4
    global_ids = np.arange(dtc.num_clients() * num_devices).reshape(
        (dtc.num_clients() * num_devices // 4, 4))
    index = dtc.client_id() * num_devices
    local_ids = global_ids.ravel().tolist()[index:index + num_devices]
    mesh = dtc.Mesh(["batch", "model"], global_ids, local_ids, [str(d) for d in local_devices])

    # create_distributed_mesh builds the same mesh
    made = dtc.create_distributed_mesh([("batch", 1), ("model", 4)])
    assert made.local_device_ids() == local_ids
    np.testing.assert_array_equal(made.global_device_ids(), global_ids)
    assert made == mesh

    layout = dtc.Layout(["batch", dtc.UNSHARDED], mesh)
    host_layout = dtc.Layout(layout.sharding_specs, mesh.host_mesh())
    x = dtc.pack([np.ones((2, 2), np.float32)] * len(mesh.local_devices()), layout)
    y = dtc.copy_to_mesh(x, host_layout)
    for part in dtc.unpack(y):
        np.testing.assert_allclose(np.asarray(part), np.ones((2, 2)), atol=1e-5)
    z = dtc.copy_to_mesh(y, layout)
    for part in dtc.unpack(z):
        np.testing.assert_allclose(np.asarray(part), np.ones((2, 2)), atol=1e-5)
    dtc.barrier(mesh)


# -- a client's environment -------------------------------------------------------------------


@pytest.mark.parametrize("idx", [0, 1])
def test_client_environment(monkeypatch, idx):
    # reference: multi_client_test.py run_client's environment for client `idx` of 2, and
    # DTensorMNISTTest.setUp's use of local_devices, num_clients and client_id
    _as_client(monkeypatch, idx)
    assert dtc.jobs() == _JOBS  # in the order given, not sorted
    assert dtc.num_clients() == 2
    assert dtc.client_id() == idx
    assert dtc.job_name() == "worker"
    assert dtc.full_job_name() == f"worker/replica:0/task:{idx}"
    assert dtc.full_job_name(task_id=0) == "worker/replica:0/task:0"
    assert dtc.full_job_name(task_id=1) == "worker/replica:0/task:1"
    n = dtc.num_local_devices("CPU")
    assert [str(d) for d in dtc.local_devices("CPU")] == [
        f"/job:worker/replica:0/task:{idx}/device:CPU:{i}" for i in range(n)]
    other = 1 - idx
    assert [str(d) for d in dtc.local_devices("CPU", for_client_id=other)] == [
        f"/job:worker/replica:0/task:{other}/device:CPU:{i}" for i in range(n)]
    assert dtc.num_global_devices("CPU") == 2 * n


def test_several_clients_default_job_name(monkeypatch):
    # reference: config.py job_name(): 'worker' when DTENSOR_JOBS names several clients
    _as_client(monkeypatch, 1, job_name=None)
    assert dtc.job_name() == "worker"
    assert dtc.full_job_name() == "worker/replica:0/task:1"


def test_one_job_is_one_client(monkeypatch):
    # reference: config.py num_clients()/job_name(): one DTENSOR_JOBS entry is one client
    monkeypatch.setenv("DTENSOR_JOBS", "localhost:12345")
    assert dtc.jobs() == ["localhost:12345"]
    assert dtc.num_clients() == 1
    assert dtc.client_id() == 0
    assert dtc.job_name() == "localhost"


# -- invalid client ids -----------------------------------------------------------------------


@pytest.mark.parametrize("jobs,client", [
    ([], "1"),          # local mode has only client 0
    (_JOBS, "2"),       # past the last of two clients
    (_JOBS, "-1"),      # negative
    (_JOBS, "one"),     # not an integer
], ids=["local_1", "two_2", "two_minus_1", "not_int"])
def test_invalid_client_id(monkeypatch, jobs, client):
    # reference: config.py client_id(): ValueError for an id outside [0, num_clients())
    if jobs:
        monkeypatch.setenv("DTENSOR_JOBS", ",".join(jobs))
    monkeypatch.setenv("DTENSOR_CLIENT_ID", client)
    with pytest.raises(ValueError):
        dtc.client_id()


def test_invalid_client_id_leaves_other_functions(monkeypatch):
    # reference: config.py: jobs, num_clients, job_name, heartbeat_enabled and
    # full_job_name with an explicit task id never read DTENSOR_CLIENT_ID
    _as_client(monkeypatch, 2)
    assert dtc.jobs() == _JOBS
    assert dtc.num_clients() == 2
    assert dtc.job_name() == "worker"
    assert dtc.full_job_name(task_id=0) == "worker/replica:0/task:0"
    assert dtc.heartbeat_enabled() is True


# -- the legacy DTENSOR_NUM_CLIENTS -----------------------------------------------------------


def test_num_clients_variable_agreeing(monkeypatch):
    # reference: config.py num_clients() counts DTENSOR_JOBS (DTENSOR_NUM_CLIENTS is removed)
    monkeypatch.setenv("DTENSOR_JOBS", ",".join(_JOBS))
    monkeypatch.setenv("DTENSOR_NUM_CLIENTS", "2")
    assert dtc.num_clients() == 2
    monkeypatch.delenv("DTENSOR_JOBS")
    monkeypatch.setenv("DTENSOR_NUM_CLIENTS", "1")
    assert dtc.num_clients() == 1


def test_num_clients_variable_alone_is_ignored(monkeypatch):
    # reference: config.py num_clients(), is_local_mode()
    monkeypatch.setenv("DTENSOR_NUM_CLIENTS", "4")
    assert dtc.num_clients() == 1
    assert dtc.client_id() == 0
    assert dtc.job_name() == "localhost"


def test_num_clients_variable_disagreeing_is_ignored(monkeypatch):
    # reference: config.py num_clients() == len(jobs())
    monkeypatch.setenv("DTENSOR_JOBS", ",".join(_JOBS))
    monkeypatch.setenv("DTENSOR_NUM_CLIENTS", "3")
    assert dtc.num_clients() == 2


# -- DTENSOR_ENABLE_HEARTBEAT -----------------------------------------------------------------


@pytest.mark.parametrize("value,enabled", [
    ("true", True), ("TRUE", True), ("1", True), ("false", False), ("0", False)])
def test_heartbeat_enabled(monkeypatch, value, enabled):
    # reference: config.py heartbeat_enabled(): true exactly for 'true' or '1' (any case)
    monkeypatch.setenv("DTENSOR_ENABLE_HEARTBEAT", value)
    assert dtc.heartbeat_enabled() is enabled


@pytest.mark.parametrize("value", ["yes", "on", "2", ""])
def test_heartbeat_disabled_for_other_values(monkeypatch, value):
    # reference: config.py heartbeat_enabled()
    monkeypatch.setenv("DTENSOR_ENABLE_HEARTBEAT", value)
    assert dtc.heartbeat_enabled() is False


# -- initialization ---------------------------------------------------------------------------


def test_shutdown_before_initialize():
    # reference: accelerator_util.py shutdown_accelerator_system(): not initialized
    with pytest.raises(ValueError, match="(?i)not initialized"):
        dtc.shutdown_accelerator_system()
    with pytest.raises(ValueError, match="(?i)not initialized"):
        dtc.shutdown_tpu_system()


def test_create_distributed_mesh_before_initialize_local():
    # reference: mesh_util.py create_distributed_mesh()
    with pytest.raises(ValueError, match="Accelerators are uninitialized"):
        dtc.create_distributed_mesh([("x", 1)])


def test_create_distributed_mesh_before_initialize_clients(monkeypatch):
    # reference: mesh_util.py create_distributed_mesh(); a client of run_client's
    # environment that has not initialized
    _as_client(monkeypatch, 1)
    with pytest.raises(ValueError, match="initialize"):
        dtc.create_distributed_mesh([("batch", 2), ("model", 1)])


def test_initialize_returns_device_type(initialized):
    # reference: accelerator_util.py initialize_accelerator_system(): returns the upper-cased
    # device type
    assert initialized(device_type="cpu", num_logical_cpu_devices=2) == "CPU"
    assert dtc.num_local_devices("CPU") == 2
    assert [str(d) for d in dtc.local_devices("CPU")] == [
        f"/job:localhost/replica:0/task:0/device:CPU:{i}" for i in range(2)]
    assert dtc.num_global_devices("CPU") == 2


def test_initialize_twice(initialized):
    # reference: accelerator_util.py initialize_accelerator_system(): already initialized
    initialized(device_type="CPU", num_logical_cpu_devices=2)
    with pytest.raises(ValueError, match="already"):
        dtc.initialize_accelerator_system("CPU", num_logical_cpu_devices=2)


def test_initialize_after_shutdown():
    # reference: accelerator_util.py: shutdown resets the initialized state
    dtc.initialize_accelerator_system("CPU", num_logical_cpu_devices=2)
    dtc.shutdown_accelerator_system()
    try:
        assert dtc.initialize_accelerator_system("CPU", num_logical_cpu_devices=2) == "CPU"
    finally:
        dtc.shutdown_accelerator_system()


def test_initialize_unknown_device_type():
    # reference: accelerator_util.py initialize_accelerator_system(): Unknown device_type
    with pytest.raises(ValueError):
        dtc.initialize_accelerator_system("XPU")
    # nothing was initialized
    with pytest.raises(ValueError, match="(?i)not initialized"):
        dtc.shutdown_accelerator_system()


def test_initialize_aliases():
    # reference: accelerator_util.py: one function exported under three names, and
    # shutdown under two
    assert dtc.initialize_multi_client is dtc.initialize_accelerator_system
    assert dtc.initialize_tpu_system is dtc.initialize_accelerator_system
    assert dtc.shutdown_tpu_system is dtc.shutdown_accelerator_system


def test_create_distributed_mesh_after_initialize(initialized):
    # reference: mesh_util.py create_distributed_mesh(): global ids arange over every
    # client's devices, this client's the contiguous block at client_id() * n
    initialized(device_type="CPU", num_logical_cpu_devices=4)
    mesh = dtc.create_distributed_mesh([("batch", 2), ("model", 2)])
    np.testing.assert_array_equal(mesh.global_device_ids(), np.arange(4).reshape((2, 2)))
    assert mesh.local_device_ids() == [0, 1, 2, 3]
    assert [str(d) for d in mesh.local_devices()] == [
        f"/job:localhost/replica:0/task:0/device:CPU:{i}" for i in range(4)]


def test_create_distributed_mesh_wrong_size(initialized):
    # reference: mesh_util.py create_distributed_mesh()
    initialized(device_type="CPU", num_logical_cpu_devices=2)
    with pytest.raises(ValueError, match="Global number of devices"):
        dtc.create_distributed_mesh([("x", 4)])
