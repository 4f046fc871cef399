"""Port of the reference's config_test.py: the config functions of dtensor_compiler
(`client_id`, `num_clients`, `job_name`, `full_job_name`, `jobs`, `local_devices`, ...) read
the reference's environment variables."""

from __future__ import annotations

import pytest

import dtensor_compiler as dtc

_DT_VARS = ("DTENSOR_JOBS", "DTENSOR_CLIENT_ID", "DTENSOR_NUM_CLIENTS", "DTENSOR_JOB_NAME",
            "DTENSOR_ENABLE_HEARTBEAT", "WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    """Every test starts in local mode (the reference's tearDown drops DTENSOR_JOBS)."""
    for name in _DT_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def two_cpus():
    """The reference's setUp configures 2 logical CPU devices; here that is
    initialize_accelerator_system(num_logical_cpu_devices=2), shut down afterwards."""
    assert dtc.initialize_accelerator_system("CPU", num_logical_cpu_devices=2) == "CPU"
    try:
        yield
    finally:
        dtc.shutdown_accelerator_system()


def test_env_vars():
    # reference: config_test.py ConfigTest.test_env_vars
    assert dtc.client_id() == 0
    assert dtc.num_clients() == 1
    assert dtc.job_name() == "localhost"
    assert dtc.full_job_name() == "localhost/replica:0/task:0"
    assert dtc.jobs() == []


def test_list_devices(two_cpus):
    # reference: config_test.py ConfigTest.test_list_devices
    # (on a CPU-only host the reference's preferred_device_type() is "CPU"; that function
    # itself is checked in test_preferred_device_type)
    device_type = "CPU"
    expected = [
        f"/job:localhost/replica:0/task:0/device:{device_type}:0",
        f"/job:localhost/replica:0/task:0/device:{device_type}:1",
    ]
    assert [str(d) for d in dtc.local_devices(device_type)] == expected
    assert dtc.num_local_devices(device_type) == 2
    assert dtc.num_global_devices(device_type) == 2


def test_preferred_device_type():
    # reference: config_test.py ConfigTest.test_list_devices (its first line)
    assert dtc.preferred_device_type() == "CPU"


def test_sort_jobs_with_bns_names(monkeypatch):
    # reference: config_test.py ConfigTest.test_sort_jobs_with_bns_names
    jobs = [f"/bns/localhost/{i}" for i in range(16)]
    monkeypatch.setenv("DTENSOR_JOBS", ",".join(jobs))
    assert dtc.jobs() == jobs

    jobs = [f"/bns/localhost/{i}:8888" for i in range(16)]
    monkeypatch.setenv("DTENSOR_JOBS", ",".join(jobs))
    assert dtc.jobs() == jobs

    # task ids 100, 99, ..., 85: not in BNS task order
    jobs = [f"/bns/localhost/{100 - i}" for i in range(16)]
    monkeypatch.setenv("DTENSOR_JOBS", ",".join(jobs))
    with pytest.raises(ValueError, match="Unexpected DTENSOR_JOBS"):
        dtc.jobs()


def test_sort_jobs_with_bns_names_with_ports(monkeypatch):
    # reference: config_test.py ConfigTest.test_sort_jobs_with_bns_names (its second case:
    # BNS names with a port, in task order, come back as given)
    jobs = [f"/bns/localhost/{i}:8888" for i in range(16)]
    monkeypatch.setenv("DTENSOR_JOBS", ",".join(jobs))
    assert dtc.jobs() == jobs


def test_unsorted_bns_names_with_ports(monkeypatch):
    # reference: config_test.py ConfigTest.test_sort_jobs_with_bns_names (its third case,
    # with ports so that only the ordering check is exercised)
    jobs = [f"/bns/localhost/{100 - i}:8888" for i in range(16)]
    monkeypatch.setenv("DTENSOR_JOBS", ",".join(jobs))
    with pytest.raises(ValueError, match="Unexpected DTENSOR_JOBS"):
        dtc.jobs()


def test_jobs_with_ip_port(monkeypatch):
    # reference: config_test.py ConfigTest.test_jobs_with_ip_port
    # host:port entries are not BNS names and need not be sorted
    jobs = [f"localhost:{16 - i}" for i in range(16)]
    monkeypatch.setenv("DTENSOR_JOBS", ",".join(jobs))
    assert dtc.jobs() == jobs
