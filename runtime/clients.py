"""This process's place among the clients (processes) that share a mesh.

Set by ``initialize_multi_client`` (`dtensor_compiler.multi_client`) and read by the
distributed backend; None in a single-client process. Client ``c`` of ``n``, holding ``d``
devices, owns device ids ``c·d .. c·d + d - 1`` of every mesh of ``n·d`` devices.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from dtensor_compiler.errors import DTensorError, MultiClientError, first_line
from dtensor_compiler.ir.mesh_shape import MeshShape
from dtensor_compiler.runtime.box import Box
from dtensor_compiler.runtime.liveness import LEFT, Heartbeat


@dataclass(frozen=True)
class Clients:
    client_id: int
    num_clients: int
    local_devices: int
    """Devices per client (every client has as many)."""
    store: Any = None
    """The coordinator's torch TCPStore (None for one client)."""
    timeout_s: float = 60.0
    """How long clients wait for each other (`gather`)."""
    heartbeat: Heartbeat | None = None

    @property
    def wait_s(self) -> float | None:
        """How long to wait for clients at a step every client takes (a program's first
        run, `pack`): with the heartbeat on, as long as they live (it ends the wait for a
        dead one); else `timeout_s`."""
        return None if self.heartbeat is not None else self.timeout_s

    def box(self, mesh: MeshShape, client: int | None = None) -> Box:
        """The devices of `client` (this one by default) on `mesh`; DTensorError when the
        mesh is not spread over these clients."""
        if mesh.num_devices != self.num_clients * self.local_devices:
            raise DTensorError(f"{mesh.text()} has {mesh.num_devices} devices, but "
                               f"{self.num_clients} clients of {self.local_devices} devices "
                               f"hold {self.num_clients * self.local_devices}: make "
                               "multi-client meshes with create_distributed_mesh")
        who = self.client_id if client is None else client
        try:
            return Box.of_devices(mesh, who * self.local_devices, self.local_devices)
        except ValueError as e:
            raise DTensorError(str(e)) from None


_CURRENT: Clients | None = None


def current() -> Clients | None:
    """The clients of this process's multi-client runtime, or None (one client)."""
    return _CURRENT


def set_current(clients: Clients | None) -> None:
    global _CURRENT
    _CURRENT = clients


def gather(store: Any, key: str, value: str, client_id: int, num_clients: int,
           timeout_s: float | None) -> list[bytes]:
    """Publish `value` under `key` and return every client's, in client order; a
    MultiClientError names the clients missing after `timeout_s` (None: no limit, for
    callers that leave dead clients to the heartbeat), as this client last saw them.
    Client 0, which holds the store, returns only once every client has read the values,
    so that it cannot take the store away from one still reading."""
    store.set(f"{key}/{client_id}", value)
    _wait(store, key, {c: f"{key}/{c}" for c in range(num_clients)}, num_clients, timeout_s)
    values = list(store.multi_get([f"{key}/{c}" for c in range(num_clients)]))
    store.set(f"{key}/read/{client_id}", "1")
    if client_id == 0:
        _wait(store, f"{key} (read)",
              {c: f"{key}/read/{c}" for c in range(1, num_clients)}, num_clients, timeout_s)
    return values


def _left(store: Any, waiting: dict[int, str]) -> list[int]:
    """Those of the clients `waiting` is still waiting for whose heartbeat says they have
    shut down (`liveness.LEFT`)."""
    beats = [f"hb/{c}" for c in waiting]
    if not beats or not store.check(beats):
        return []  # (some) entries absent: no heartbeat, or not yet started
    return [c for c, v in zip(waiting, store.multi_get(beats)) if v == LEFT.encode()]


def say_and_leave(store: Any, key: str, value: str, client_id: int) -> None:
    """Publish `value` under `key` as `gather` does, and count as having read the others',
    for a client that refuses to go on: the others' `gather` then returns (with its
    value, to name it) instead of waiting for it."""
    store.set(f"{key}/{client_id}", value)
    store.set(f"{key}/read/{client_id}", "1")


def read(store: Any, key: str, owner: int, num_clients: int, timeout_s: float | None
         ) -> bytes:
    """The value client `owner` published under `key`, once it has; MultiClientError
    naming the client after `timeout_s`."""
    _wait(store, key, {owner: key}, num_clients, timeout_s)
    value: bytes = store.get(key)
    return value


def _wait(store: Any, key: str, waiting: dict[int, str], num_clients: int,
          timeout_s: float | None) -> None:
    """Wait until the store holds every key of `waiting` (by client)."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    pause = 0.005
    while True:
        try:
            for c in [c for c, k in waiting.items() if store.check([k])]:
                del waiting[c]
            gone = _left(store, waiting)
            for c in [c for c in gone if store.check([waiting[c]])]:
                del waiting[c]  # it got here before leaving (its key, then LEFT)
                gone.remove(c)
        except Exception as e:  # the coordinator closed: it gave up, or died
            raise MultiClientError(
                f"{key}: the coordinator (client 0) went away while waiting for client"
                f"{'s' if len(waiting) > 1 else ''} {', '.join(map(str, sorted(waiting)))}: "
                f"{first_line(e)}") from None
        if not waiting:
            return
        if gone:
            raise MultiClientError(f"{key}: client{'s' if len(gone) > 1 else ''} "
                                   f"{', '.join(map(str, gone))} of {num_clients} shut down "
                                   "before getting here: every client must run the same "
                                   "programs")
        if deadline is not None and time.monotonic() > deadline:
            missing = sorted(waiting)
            raise MultiClientError(f"{key}: client{'s' if len(missing) > 1 else ''} "
                                   f"{', '.join(map(str, missing))} of {num_clients} did not "
                                   f"arrive within {timeout_s:g} s")
        time.sleep(pause)
        pause = min(pause * 2, 0.05)
