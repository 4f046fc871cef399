"""The multi-client runtime: the environment, the order of calls, and real clients (processes)
joined over gloo on 127.0.0.1 running the same programs as the simulated mesh."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import dtensor_compiler as dtc
from dtensor_compiler import multi_client
from dtensor_compiler.ir.mesh_shape import MeshShape
from dtensor_compiler.runtime.box import Box

torch = pytest.importorskip("torch")

WORKER = Path(__file__).with_name("multi_client_worker.py")
TIMEOUT_S = 240
"""Bound on one client process (gloo's own default is 30 minutes)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(case: str, clients: int, local: int, shape: str, port: int | None = None,
           only: list[int] | None = None, extra: dict[str, str] | None = None
           ) -> list[subprocess.Popen[str]]:
    port = port or _free_port()
    return [_client(case, c, _jobs(port, clients), local, shape, extra)
            for c in (only if only is not None else range(clients))]


def _jobs(port: int, clients: int) -> str:
    return ",".join(f"127.0.0.1:{port + i}" for i in range(clients))


def _client(case: str, client: int, jobs: str, local: int, shape: str,
            extra: dict[str, str] | None = None) -> subprocess.Popen[str]:
    env = {**os.environ, "DTENSOR_JOBS": jobs, "DTENSOR_CLIENT_ID": str(client),
           "OMP_NUM_THREADS": "1", **(extra or {})}
    return subprocess.Popen([sys.executable, str(WORKER), case, str(local), shape], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(procs: list[subprocess.Popen[str]]) -> list[tuple[int, str]]:
    out = []
    for p in procs:
        try:
            text, _ = p.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        out.append((p.returncode, text))
    return out


def _run_ok(case: str, clients: int, local: int, shape: str) -> None:
    for c, (code, text) in enumerate(_finish(_start(case, clients, local, shape))):
        assert code == 0 and f"ok {case} {c}" in text, f"client {c}:\n{text[-3000:]}"


# -- real clients -------------------------------------------------------------------------------


@pytest.mark.parametrize("clients,local,shape", [
    (2, 1, "2"), (4, 1, "2x2"), (2, 2, "2x2"), (2, 4, "2x4"), (4, 2, "2x4")])
def test_every_collective_matches_the_simulated_mesh(clients: int, local: int,
                                                     shape: str) -> None:
    """4 x 1 and 2 x 1 use one torch collective per IR collective; 2 x 2 and 2 x 4 hold tp
    whole (local) and talk over dp; 4 x 2 holds half of tp, so collectives over tp or (dp,
    tp) take the gathering fallback."""
    _run_ok("collectives", clients, local, shape)


@pytest.mark.parametrize("clients,local,shape", [(2, 1, "2"), (4, 2, "8")])
def test_nans_odd_dtypes_a_late_client_and_client_0_leaving_first(clients: int, local: int,
                                                                  shape: str) -> None:
    procs = _start("edges", clients, local, shape, extra={"DTC_JOIN_TIMEOUT": "2"})
    for c, (code, text) in enumerate(_finish(procs)):
        assert code == 0 and f"ok edges {c}" in text, f"client {c}:\n{text[-3000:]}"


@pytest.mark.parametrize("clients,local", [(4, 1), (2, 2)])
def test_megatron_mlp_and_its_training_step_match_the_simulated_mesh(clients: int,
                                                                      local: int) -> None:
    _run_ok("mlp", clients, local, "2x2")


def test_a_client_that_never_joins_is_named_within_the_timeout() -> None:
    start = time.monotonic()
    procs = _start("mlp", 3, 1, "3", only=[0, 1], extra={"DTC_JOIN_TIMEOUT": "3"})
    results = _finish(procs)
    assert time.monotonic() - start < 60
    for code, text in results:
        assert code != 0
        assert ("MultiClientError: join: client 2 of 3 did not arrive within 3 s" in text
                or "MultiClientError: join: the coordinator (client 0) went away while "
                   "waiting for client 2" in text), text


@pytest.mark.parametrize("counts,message", [
    ([(2, 1), (3, 1)], "client 0 counts 2 clients of 1 device, client 1 3 clients of 1 device"),
    ([(3, 1), (2, 1), (3, 1)],
     "client 0 counts 3 clients of 1 device, client 1 2 clients of 1 device"),
    ([(2, 1), (2, 2)], "client 0 counts 2 clients of 1 device, client 1 2 clients of 2 "
                       "devices"),
])
def test_clients_that_count_other_clients_or_devices_are_named(
        counts: list[tuple[int, int]], message: str) -> None:
    """Client c is started with the DTENSOR_JOBS of counts[c][0] clients and counts[c][1]
    devices: every client refuses at the join, naming the counts, well within the join
    timeout."""
    port = _free_port()
    start = time.monotonic()
    procs = [_client("mlp", c, _jobs(port, n), local, "2", {"DTC_JOIN_TIMEOUT": "30"})
             for c, (n, local) in enumerate(counts)]
    results = _finish(procs)
    assert time.monotonic() - start < 25
    for code, text in results:
        assert code != 0 and "MultiClientError: join: the clients disagree on the mesh: " \
            + message in text, text


def test_a_collective_failing_on_one_client_fails_the_others_naming_it() -> None:
    start = time.monotonic()
    (code0, text0), (code1, text1) = _finish(_start("fails", 2, 1, "2"))
    assert time.monotonic() - start < 60
    assert code1 != 0 and "RuntimeError: injected: the link to client 0 broke" in text1, text1
    assert code0 != 0 and ("MultiClientError: all_reduce over mesh dims ['x'] failed on "
                           "client 0, in the group of clients [0, 1]: ") in text0, text0


def test_a_client_that_shut_down_is_named_instead_of_waited_for() -> None:
    start = time.monotonic()
    for c, (code, text) in enumerate(_finish(_start("outlived", 2, 1, "2"))):
        assert code == 0 and f"ok outlived {c}" in text, f"client {c}:\n{text[-3000:]}"
    assert time.monotonic() - start < 60


def test_the_example_under_torchrun() -> None:
    """torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR/PORT, its agent's store)."""
    example = Path(__file__).parents[1] / "examples" / "multiprocess_mlp.py"
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
         str(example)], env={**os.environ, "DTC_LOCAL_DEVICES": "2", "OMP_NUM_THREADS": "1"},
        capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stdout + done.stderr
    for c, devices in ((0, "[0, 1]"), (1, "[2, 3]")):
        assert f"client {c} of 2: devices {devices}, result matches numpy" in done.stdout
    assert "all_reduce  tp" in done.stdout


def _wait_ready(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        assert p.stdout is not None
        line = p.stdout.readline()
        assert line.strip() == "ready", line


@pytest.mark.parametrize("victim,signal_name,message", [
    (3, "SIGKILL", "client 3 of 4 sent no heartbeat for 3 s (dead or hung)"),
    (2, "SIGSTOP", "client 2 of 4 sent no heartbeat for 3 s (dead or hung)"),
    (0, "SIGKILL", "the coordinator's store (in client 0) cannot be reached"),
])
def test_a_dead_or_hung_client_makes_the_others_exit_naming_it(
        victim: int, signal_name: str, message: str) -> None:
    """Four clients started independently (no launcher), idle when one dies or stops: the
    others notice through the heartbeat alone, within the timeout plus a beat."""
    import signal
    procs = _start("idle", 4, 1, "4", extra={"DTC_HEARTBEAT_TIMEOUT": "3"})
    try:
        _wait_ready(procs)
        start = time.monotonic()
        procs[victim].send_signal(getattr(signal, signal_name))
        for c, p in enumerate(procs):
            if c == victim:
                continue
            text, _ = p.communicate(timeout=60)
            assert p.returncode == 75, text
            assert f"MultiClientError: liveness: client {c} stops: {message}" in text, text
        assert time.monotonic() - start < 30  # the bound: 3 s, plus beats and exit
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_clients_running_different_programs_refuse_instead_of_hanging() -> None:
    for code, text in _finish(_start("mismatch", 2, 1, "2")):
        assert code != 0
        assert "MultiClientError: plan 0: clients 1 planned another program than client 0" \
            in text, text


def test_a_taken_coordinator_port_is_named() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = int(s.getsockname()[1])
        (code, text), = _finish(_start("mlp", 2, 1, "2", port=port, only=[0],
                                       extra={"DTC_JOIN_TIMEOUT": "3"}))
    assert code != 0
    assert f"client 0 cannot listen on 127.0.0.1:{port}" in text and "in use" in text, text


def test_a_checkpoint_saved_by_4_clients_restores_in_2_on_another_mesh(tmp_path: Path
                                                                        ) -> None:
    """4 clients of 2 devices save on a 2 x 4 mesh (each writes only its own devices'
    files); 2 clients of 3 devices restore onto 2 x 3 in other layouts, and so does this
    single process, on a mesh of its own."""
    extra = {"DTC_TEST_DIR": str(tmp_path)}
    for c, (code, text) in enumerate(_finish(_start("ckpt_save", 4, 2, "2x4", extra=extra))):
        assert code == 0 and f"ok ckpt_save {c}" in text, f"client {c}:\n{text[-3000:]}"
    files = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("named."))
    assert files == [f"named.0.data-0000{d}.safetensors" for d in range(8)] + [
        "named.index.json"]
    for c, (code, text) in enumerate(_finish(_start("ckpt_restore", 2, 3, "2x3",
                                                    extra=extra))):
        assert code == 0 and f"ok ckpt_restore {c}" in text, f"client {c}:\n{text[-3000:]}"
    mesh = dtc.create_mesh([("x", 3)])
    w = dtc.copy_to_mesh(np.zeros((8, 12), np.float32), dtc.Layout([dtc.UNSHARDED, "x"], mesh))
    out = dtc.name_based_restore(mesh, tmp_path / "named", {"w": w})["w"]
    expected = np.random.default_rng(7).standard_normal((8, 12)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(out), expected)


def test_a_save_failing_on_one_client_fails_on_every_client(tmp_path: Path) -> None:
    procs = _start("ckpt_failure", 2, 1, "2", extra={"DTC_TEST_DIR": str(tmp_path)})
    for c, (code, text) in enumerate(_finish(procs)):
        assert code == 0 and f"ok ckpt_failure {c}" in text, f"client {c}:\n{text[-3000:]}"


# -- the environment and the order of calls -----------------------------------------------------


def _env(**values: str) -> multi_client._Environment:
    return multi_client._Environment.read(values)


def test_the_reference_environment() -> None:
    env = _env(DTENSOR_JOBS="h0:1000,h1:1001,h2:1002", DTENSOR_CLIENT_ID="2")
    assert (env.num_clients, env.client_id, env.job_name, env.coordinator) == (
        3, 2, "worker", ("h0", 1000))
    assert env.heartbeat
    assert not _env(DTENSOR_ENABLE_HEARTBEAT="false").heartbeat
    local = _env()
    assert (local.num_clients, local.client_id, local.job_name, local.jobs) == (
        1, 0, "localhost", ())


def test_torchrun_environment() -> None:
    env = _env(RANK="3", WORLD_SIZE="4", MASTER_ADDR="10.0.0.1", MASTER_PORT="2345")
    assert (env.num_clients, env.client_id, env.coordinator) == (4, 3, ("10.0.0.1", 2345))


@pytest.mark.parametrize("values,message", [
    ({"DTENSOR_JOBS": "a:1,b:2", "DTENSOR_CLIENT_ID": "2"},
     "Environment variable DTENSOR_CLIENT_ID must be < 2, got 2"),
    ({"DTENSOR_CLIENT_ID": "-1"}, "Environment variable DTENSOR_CLIENT_ID must be >= 0, got -1"),
    ({"RANK": "x", "WORLD_SIZE": "2"}, "RANK must be an integer, got 'x'"),
    ({"DTENSOR_JOBS": "a,b:2"}, "DTENSOR_JOBS entry 'a' is not host:port"),
])
def test_malformed_client_ids_and_coordinators(values: dict[str, str], message: str) -> None:
    """As in the reference, reading the environment does not check the client id or the
    coordinator's address: asking for them does (initialize does both)."""
    env = multi_client._Environment.read(values)
    with pytest.raises(ValueError, match=re.escape(message)):
        (env.coordinator if "entry" in message else env.client_id)  # noqa: B018


@pytest.mark.parametrize("values,message", [
    ({"DTENSOR_JOBS": "a:1,b:2", "WORLD_SIZE": "4"},
     "WORLD_SIZE is 4, but DTENSOR_JOBS names 2 clients"),
    ({"DTENSOR_JOBS": "/bns/w/1:8888,/bns/w/0:8888"},
     "Unexpected DTENSOR_JOBS content /bns/w/1:8888,/bns/w/0:8888. Sort entries"),
])
def test_malformed_environments(values: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        multi_client._Environment.read(values)


def test_the_legacy_client_count_is_ignored() -> None:
    """DTENSOR_NUM_CLIENTS is gone from the reference: the jobs decide."""
    assert _env(DTENSOR_NUM_CLIENTS="4").num_clients == 1
    assert _env(DTENSOR_JOBS="a:1,b:2", DTENSOR_NUM_CLIENTS="3").num_clients == 2


def test_calls_in_the_wrong_order(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="not initialized"):
        dtc.shutdown_accelerator_system()
    monkeypatch.setenv("DTENSOR_JOBS", "127.0.0.1:1,127.0.0.1:2")
    with pytest.raises(ValueError, match="Accelerators are uninitialized, please run "):
        dtc.create_distributed_mesh([("x", 2)])
    monkeypatch.delenv("DTENSOR_JOBS")
    with pytest.raises(ValueError, match="Accelerators are uninitialized"):  # one client too
        dtc.create_distributed_mesh([("x", 2)])
    assert dtc.initialize_accelerator_system() == "CPU"
    try:
        with pytest.raises(ValueError, match="already initialized"):
            dtc.initialize_multi_client()
        assert (dtc.num_clients(), dtc.client_id(), dtc.num_local_devices("CPU")) == (1, 0, 1)
        assert dtc.local_devices("cpu") == ["/job:localhost/replica:0/task:0/device:CPU:0"]
        assert dtc.full_job_name() == "localhost/replica:0/task:0"
        with pytest.raises(ValueError, match="Unexpected task ID 1"):
            dtc.full_job_name(1)
        with pytest.raises(ValueError, match="not one of"):
            dtc.local_devices("QPU")
        dtc.barrier(dtc.create_distributed_mesh([("x", 1)]))  # one client: nothing to wait
        with pytest.raises(ValueError, match=re.escape(
                "Global number of devices (1 per client * 1 clients = 1) must be equal to "
                "total size of the mesh of shape (4,)")):
            dtc.create_distributed_mesh([("x", 4)])
        assert dtc.create_distributed_mesh([("x", 1)], local_devices=["cpu:0"]) == \
            dtc.create_mesh([("x", 1)])
    finally:
        dtc.shutdown_accelerator_system()
    with pytest.raises(ValueError, match="not supported"):
        dtc.initialize_accelerator_system("TPU")


@pytest.mark.parametrize("sizes,count,first,start,extent", [
    ((2, 4), 4, 4, (1, 0), (1, 4)),
    ((2, 4), 2, 6, (1, 2), (1, 2)),
    ((2, 4), 8, 0, (0, 0), (2, 4)),
    ((4, 2, 2), 8, 8, (2, 0, 0), (2, 2, 2)),
])
def test_a_clients_devices_are_a_box(sizes: tuple[int, ...], count: int, first: int,
                                     start: tuple[int, ...], extent: tuple[int, ...]) -> None:
    mesh = MeshShape(tuple(zip("abc", sizes)))
    box = Box.of_devices(mesh, first, count)
    assert (box.start, box.extent) == (start, extent)
    assert box.devices == list(range(first, first + count))


@pytest.mark.parametrize("sizes,count", [((2, 4), 3), ((4, 3), 2), ((3, 4), 8)])
def test_device_blocks_that_are_no_box_are_refused(sizes: tuple[int, ...], count: int) -> None:
    with pytest.raises(ValueError):
        Box.of_devices(MeshShape(tuple(zip("ab", sizes))), 0, count)
