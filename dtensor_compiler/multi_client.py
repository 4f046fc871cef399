"""Several processes, one mesh: the reference system's multi-client functions.

A *client* is one process holding some of a mesh's devices. The environment says how many
there are and which one this is, in the reference system's variables or torchrun's:

=========================  ===================================================================
``DTENSOR_JOBS``           ``host:port`` of every client, comma-separated, in client order;
                           the first one's address is the coordinator (client 0 listens there)
``DTENSOR_CLIENT_ID``      this client's position in ``DTENSOR_JOBS`` (default 0)
``DTENSOR_NUM_CLIENTS``    the number of clients (legacy; must agree with the others if given)
``DTENSOR_JOB_NAME``       the job's name in device names (default ``localhost`` for one
                           client, ``worker`` for several)
``DTENSOR_ENABLE_HEARTBEAT``  ``true`` (default) or ``false``: see `heartbeat_enabled`
``RANK``, ``WORLD_SIZE``   torchrun's: this client and the number of clients, when
                           ``DTENSOR_JOBS`` is not set
``MASTER_ADDR``,           torchrun's coordinator (default ``127.0.0.1``, port 29500)
``MASTER_PORT``
``LOCAL_RANK``             torchrun's position on the host (read by `local_rank` only)
=========================  ===================================================================

With none of them set there is one client, and everything is the simulated mesh, as without
this module. `initialize_multi_client` (also exported as `initialize_accelerator_system` and
`initialize_tpu_system`) joins the clients: client 0 hosts a torch ``TCPStore`` at the
coordinator (under torchrun, its agent does), every client checks in there (a client that
does not arrive within the timeout is named), and a gloo process group is made over it.
After that, `create_distributed_mesh` gives every client the same mesh with its own
contiguous block of device ids, and compiled functions and the eager API run on this
client's devices (the ``distributed`` backend), watched by a heartbeat (`runtime.liveness`).

Differences from the reference: `shutdown_accelerator_system` works multi-client too (it
leaves the process group), and CPU is the only device type.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import numpy as np

from dtensor_compiler.errors import MultiClientError, first_line
from dtensor_compiler.mesh import Mesh, cpu_device_name, full_device_name, local_cpu_count
from dtensor_compiler.runtime import clients
from dtensor_compiler.runtime.liveness import Heartbeat

DEFAULT_TIMEOUT_S = 60.0
"""How long clients wait for each other to join, and a barrier by default
(``DTC_JOIN_TIMEOUT`` overrides it)."""

_DEVICE_TYPES = ("CPU", "GPU", "TPU")


@dataclass(frozen=True)
class _Environment:
    """What the environment says about the clients. As in the reference, only what needs
    the client id (`client_id`) fails for a bad one, and the coordinator's address is read
    when the clients join."""

    jobs: tuple[str, ...]
    num_clients: int
    job_name: str
    heartbeat: bool
    client_variable: str
    """The variable that gives this client's id: ``DTENSOR_CLIENT_ID``, or torchrun's
    ``RANK``."""
    client_text: str
    launcher: tuple[str, int] | None = None
    """torchrun's ``MASTER_ADDR`` and ``MASTER_PORT``, when ``WORLD_SIZE`` names the
    clients."""

    @staticmethod
    def read(env: Mapping[str, str]) -> _Environment:
        raw = env.get("DTENSOR_JOBS", "")
        jobs = tuple(j for j in raw.split(",") if j)
        if any(j.startswith("/bns/") for j in jobs) and list(jobs) != sorted(jobs,
                                                                             key=_task_order):
            raise ValueError(f"Unexpected DTENSOR_JOBS content {raw}. Sort entries in "
                             "DTENSOR_JOBS because cluster construction relies on the order.")
        launcher = None
        variable = "DTENSOR_CLIENT_ID"
        if jobs:
            count = len(jobs)
            if "WORLD_SIZE" in env and _int(env, "WORLD_SIZE", 1) != count:
                raise ValueError(f"WORLD_SIZE is {env['WORLD_SIZE']}, but DTENSOR_JOBS names "
                                 f"{count} clients")
        elif "WORLD_SIZE" in env:
            count = _int(env, "WORLD_SIZE", 1)
            variable = "RANK"
            launcher = (env.get("MASTER_ADDR", "127.0.0.1"), _int(env, "MASTER_PORT", 29500))
        else:
            count = 1  # DTENSOR_NUM_CLIENTS is ignored, as the reference now does
        name = env.get("DTENSOR_JOB_NAME") or ("localhost" if count == 1 else "worker")
        heartbeat = env.get("DTENSOR_ENABLE_HEARTBEAT", "true").lower() in ("true", "1")
        return _Environment(jobs, count, name, heartbeat, variable,
                            env.get(variable, ""), launcher)

    @property
    def client_id(self) -> int:
        """This client's id; ValueError when the variable is not an id of these clients."""
        text, variable = self.client_text, self.client_variable
        try:
            who = int(text) if text else 0
        except ValueError:
            raise ValueError(f"{variable} must be an integer, got {text!r}") from None
        if who < 0:
            raise ValueError(f"Environment variable {variable} must be >= 0, got {who}")
        if who >= self.num_clients:
            raise ValueError(f"Environment variable {variable} must be < {self.num_clients}, "
                             f"got {who}")
        return who

    @property
    def coordinator(self) -> tuple[str, int]:
        """Where client 0 serves the store: the first job's ``host:port``, or torchrun's."""
        if self.launcher is not None:
            return self.launcher
        return _address(self.jobs[0], "DTENSOR_JOBS")


def _task_order(job: str) -> tuple[int, int | str]:
    """The order the reference requires of BNS job names: by the task number after their
    last ``/`` (before any ``:port``), names without one after those with one."""
    task = job.rsplit("/", 1)[-1].split(":", 1)[0]
    return (0, int(task)) if task.isdigit() else (1, job)


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    text = env.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {text!r}") from None


def _address(job: str, source: str) -> tuple[str, int]:
    host, sep, port = job.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"{source} entry {job!r} is not host:port")
    return host, int(port)


@dataclass
class _Runtime:
    """The joined clients of this process."""

    env: _Environment
    device_type: str
    clients: clients.Clients
    """This client's place among them (the store, its devices, the timeouts), as the
    runtime sees it."""
    barriers: dict[str, int] = field(default_factory=dict)
    """How often each barrier name has been passed."""


_RUNTIME: _Runtime | None = None


def _environment() -> _Environment:
    return _RUNTIME.env if _RUNTIME is not None else _Environment.read(os.environ)


# -- what the environment says ------------------------------------------------------------------


def jobs() -> list[str]:
    """The ``host:port`` of every client (``DTENSOR_JOBS``); empty when it is not set."""
    return list(_environment().jobs)


def num_clients() -> int:
    """The number of clients: 1 unless ``DTENSOR_JOBS`` (or torchrun) names several."""
    return _environment().num_clients


def client_id() -> int:
    """This client's number, 0 to ``num_clients() - 1``."""
    return _environment().client_id


def local_rank() -> int:
    """This client's position on its host (torchrun's ``LOCAL_RANK``; default 0)."""
    return _int(os.environ, "LOCAL_RANK", 0)


def job_name() -> str:
    """The job's name in device names: ``DTENSOR_JOB_NAME``, else ``localhost`` for one
    client and ``worker`` for several."""
    return _environment().job_name


def full_job_name(task_id: int | None = None) -> str:
    """``<job>/replica:0/task:<task>`` of client `task_id` (this one by default)."""
    env = _environment()
    task = env.client_id if task_id is None else task_id
    if env.job_name == "localhost" and task != 0:
        raise ValueError(f"Unexpected task ID {task} in local runs")
    return f"{env.job_name}/replica:0/task:{task}"


def heartbeat_enabled() -> bool:
    """Whether ``DTENSOR_ENABLE_HEARTBEAT`` is ``true`` or ``1`` (any case; the default is
    true)."""
    return _environment().heartbeat


def _check_type(device_type: str) -> str:
    kind = device_type.upper()
    if kind not in _DEVICE_TYPES:
        raise ValueError(f"device type {device_type!r} is not one of {list(_DEVICE_TYPES)}")
    return kind


def local_devices(device_type: str, for_client_id: int | None = None) -> list[str]:
    """The names of a client's devices of `device_type` (this client by default)."""
    kind = _check_type(device_type)
    env = _environment()
    task = env.client_id if for_client_id is None else for_client_id
    return [f"/job:{env.job_name}/replica:0/task:{task}/device:{kind}:{i}"
            for i in range(num_local_devices(kind))]


def num_local_devices(device_type: str) -> int:
    """Devices of `device_type` on this client: those `initialize_multi_client` was given
    (``num_logical_cpu_devices``, default 1), and before it the simulated host's logical
    CPUs (``DTC_NUM_DEVICES``, default 8); 0 for a type it has none of."""
    kind = _check_type(device_type)
    running = _RUNTIME.device_type if _RUNTIME is not None else "CPU"
    return local_cpu_count() if kind == running else 0


def preferred_device_type() -> str:
    """The device type programs run on by default: the first of TPU, GPU and CPU this host
    has, so ``CPU``."""
    return "CPU"


def num_global_devices(device_type: str) -> int:
    """Devices of `device_type` over all clients (every client has as many)."""
    return num_local_devices(device_type) * num_clients()


# -- joining ------------------------------------------------------------------------------------


def initialize_accelerator_system(device_type: str | None = None,
                                  enable_coordination_service: bool = True,
                                  num_logical_cpu_devices: int | None = None,
                                  experimental_reset_context: bool = False,
                                  experimental_enable_megcore: bool = False, *,
                                  timeout_s: float | None = None,
                                  heartbeat_timeout_s: float | None = None) -> str:
    """Join the clients the environment names and return the device type (``CPU``).

    `num_logical_cpu_devices`: the devices of this client (default 1); every client must
    give the same number. `timeout_s`: how long to wait for every client to join (default
    ``DTC_JOIN_TIMEOUT`` or 60 s); `MultiClientError` names the clients that did not, or
    says the coordinator's port is taken. `heartbeat_timeout_s`: with the heartbeat on
    (`heartbeat_enabled`), a client that another has not heard from for this long (default
    ``DTC_HEARTBEAT_TIMEOUT`` or 60 s) is dead or hung, and every client that notices exits
    at once, naming it (`runtime.liveness`). ValueError when called twice, for a device
    type other than CPU, or for a malformed environment.
    """
    global _RUNTIME
    if _RUNTIME is not None:
        raise ValueError("the accelerator system is already initialized; call "
                         "shutdown_accelerator_system() first")
    kind = _check_type(device_type or "CPU")
    if kind != "CPU":
        raise ValueError(f"device type {kind} is not supported: clients run on CPU devices")
    devices = 1 if num_logical_cpu_devices is None else num_logical_cpu_devices
    if not isinstance(devices, int) or devices < 1:
        raise ValueError(f"num_logical_cpu_devices must be a positive int, got {devices!r}")
    env = _Environment.read(os.environ)
    wait = timeout_s if timeout_s is not None else _seconds("DTC_JOIN_TIMEOUT")
    store = heartbeat = None
    if env.num_clients > 1:
        store = _join(env, devices, wait)
        if env.heartbeat:
            heartbeat = _start_heartbeat(env, heartbeat_timeout_s)
    current = clients.Clients(env.client_id, env.num_clients, devices, store, wait, heartbeat)
    _RUNTIME = _Runtime(env, kind, current)
    clients.set_current(current)
    return kind


initialize_multi_client = initialize_accelerator_system
initialize_tpu_system = initialize_accelerator_system


def _seconds(variable: str) -> float:
    """A timeout from the environment (`DEFAULT_TIMEOUT_S` when unset)."""
    text = os.environ.get(variable)
    return float(text) if text else DEFAULT_TIMEOUT_S


def _join(env: _Environment, devices: int, timeout_s: float) -> Any:
    """Start or reach the coordinator's store, check every client in (naming those that do
    not come, and those that count other clients or devices than client 0), and make the
    gloo process group over it."""
    try:
        import torch.distributed as dist
    except ModuleNotFoundError:
        raise MultiClientError("several clients need torch: pip install torch==2.13.0") \
            from None
    host, port = env.coordinator
    timeout = timedelta(seconds=timeout_s)
    # under torchrun the agent already serves a store at the coordinator address
    leader = env.client_id == 0 and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True"
    try:
        store = dist.TCPStore(host, port, env.num_clients, is_master=leader, timeout=timeout,
                              wait_for_workers=False)
    except Exception as e:  # torch raises DistNetworkError / RuntimeError subclasses
        if leader:
            raise MultiClientError(f"client 0 cannot listen on {host}:{port} (the "
                                   f"coordinator address): {first_line(e)}; is the port in "
                                   "use?") from None
        raise MultiClientError(f"client {env.client_id} cannot reach the coordinator at "
                               f"{host}:{port} within {timeout_s:g} s: "
                               f"{first_line(e)}") from None
    counts = f"{env.num_clients} {devices}"
    if env.client_id != 0:
        # client 0's counts first: a client counting more clients would wait for one that
        # never comes; it says its own before refusing, so that client 0 can name it
        first = clients.read(store, "join/0", 0, env.num_clients, timeout_s).decode()
        if first != counts:
            clients.say_and_leave(store, "join", counts, env.client_id)
            raise _miscounted({env.client_id: counts}, first)
    said = [t.decode() for t in clients.gather(store, "join", counts, env.client_id,
                                                 env.num_clients, timeout_s)]
    differ = {c: t for c, t in enumerate(said) if t != said[0]}
    if differ:
        raise _miscounted(differ, said[0])
    dist.init_process_group("gloo", store=dist.PrefixStore("gloo", store),
                            rank=env.client_id, world_size=env.num_clients, timeout=timeout)
    return store


def _miscounted(differ: dict[int, str], first: str) -> MultiClientError:
    """The error for clients (id -> "clients devices") whose counts differ from client 0's."""
    def said(text: str) -> str:
        n, d = text.split()
        return f"{n} clients of {d} device{'s' if d != '1' else ''}"
    return MultiClientError(
        "join: the clients disagree on the mesh: client 0 counts " + said(first) + ", "
        + ", ".join(f"client {c} {said(t)}" for c, t in sorted(differ.items()))
        + " (every client must name the same DTENSOR_JOBS or WORLD_SIZE and pass the same "
          "num_logical_cpu_devices)")


def _start_heartbeat(env: _Environment, timeout_s: float | None) -> Heartbeat:
    """The heartbeat thread, on a store connection of its own."""
    import torch.distributed as dist
    if timeout_s is None:
        timeout_s = _seconds("DTC_HEARTBEAT_TIMEOUT")
    host, port = env.coordinator
    store = dist.TCPStore(host, port, env.num_clients, is_master=False,
                          timeout=timedelta(seconds=timeout_s))
    beat = Heartbeat(store, env.client_id, env.num_clients, timeout_s)
    beat.start()
    return beat


def shutdown_accelerator_system() -> None:
    """Leave the clients (their process group) and go back to one client. ValueError when
    not initialized."""
    global _RUNTIME
    if _RUNTIME is None:
        raise ValueError("the accelerator system is not initialized")
    current = _RUNTIME.clients
    if current.heartbeat is not None:
        current.heartbeat.stop()
    if current.store is not None:
        import torch.distributed as dist
        distributed = sys.modules.get("dtensor_compiler.runtime.distributed")
        if distributed is not None:
            distributed.forget_process_groups()
        if dist.is_initialized():
            dist.destroy_process_group()
    _RUNTIME = None
    clients.set_current(None)


shutdown_tpu_system = shutdown_accelerator_system


def barrier(mesh: Mesh, barrier_name: str | None = None,
            timeout_in_ms: int | None = None) -> None:
    """Wait until every client of `mesh` reaches this barrier (the same name, as often).
    `MultiClientError` names the clients still missing after `timeout_in_ms` (default:
    the join timeout). Nothing to wait for with one client."""
    if not isinstance(mesh, Mesh):
        raise TypeError(f"barrier expects a Mesh, got {type(mesh).__name__}")
    if _RUNTIME is None or _RUNTIME.clients.store is None:
        return
    current = _RUNTIME.clients
    name = barrier_name or "barrier"
    count = _RUNTIME.barriers.get(name, 0) + 1
    _RUNTIME.barriers[name] = count
    seconds = timeout_in_ms / 1000 if timeout_in_ms is not None else current.timeout_s
    clients.gather(current.store, f"barrier {name!r} #{count}", "1", current.client_id,
                   current.num_clients, seconds)


# -- meshes -------------------------------------------------------------------------------------


def create_distributed_mesh(mesh_dims: Sequence[tuple[str, int]] | dict[str, int],
                            mesh_name: str = "", local_devices: Sequence[str] | None = None,
                            device_type: str | None = None, use_xla_spmd: bool = False) -> Mesh:
    """A mesh over every client's devices, this client's being the contiguous block of
    device ids ``client_id() * n .. + n - 1`` (row-major), ``n`` its local device count
    (or the number of `local_devices` given, in full or short form: ``CPU:0``). ValueError
    before `initialize_accelerator_system`, and when the mesh does not have exactly every
    client's devices."""
    if _RUNTIME is None:
        raise ValueError("Accelerators are uninitialized, please run "
                         "dtensor.initialize_accelerator_system() first.")
    env = _RUNTIME.env
    kind = _check_type(device_type or _RUNTIME.device_type)
    if kind != "CPU":
        raise ValueError(f"device type {kind} is not supported: clients run on CPU devices")
    if local_devices is not None:
        mine = [full_device_name(d, env.client_id, env.job_name) for d in local_devices]
        if env.num_clients > 1 and len(mine) != _RUNTIME.clients.local_devices:
            raise ValueError(f"this client was initialized with "
                             f"{_RUNTIME.clients.local_devices} devices, got {len(mine)} "
                             "local_devices")
    else:
        mine = [cpu_device_name(i, env.client_id, env.job_name)
                for i in range(_RUNTIME.clients.local_devices)]
    dims = list(mesh_dims.items()) if isinstance(mesh_dims, dict) else list(mesh_dims)
    names = [d for d, _ in dims]
    shape = [s for _, s in dims]
    n = len(mine)
    total = n * env.num_clients
    if int(np.prod(shape)) != total:
        raise ValueError(f"Global number of devices ({n} per client * {env.num_clients} "
                         f"clients = {total}) must be equal to total size of the mesh of "
                         f"shape {tuple(shape)}")
    ids = np.arange(total).reshape(shape)
    first = n * env.client_id
    every = None
    if env.num_clients > 1:
        every = [cpu_device_name(i % n, task=i // n, job=env.job_name) for i in range(total)]
    mesh = Mesh(names, ids, list(range(first, first + n)), mine, mesh_name, every,
                use_xla_spmd)
    clients.Clients(env.client_id, env.num_clients, n).box(mesh.mesh_shape())
    return mesh
