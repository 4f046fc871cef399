"""This process's place among the clients (processes) that share a mesh.

Set by ``initialize_multi_client`` (`dtensor_compiler.multi_client`) and read by the
distributed backend; None in a single-client process. Client ``c`` of ``n``, holding ``d``
devices, owns device ids ``c·d .. c·d + d - 1`` of every mesh of ``n·d`` devices.
"""

from __future__ import annotations

from dataclasses import dataclass

from dtensor_compiler.errors import DTensorError
from dtensor_compiler.ir.mesh_shape import MeshShape
from dtensor_compiler.runtime.box import Box


@dataclass(frozen=True)
class Clients:
    client_id: int
    num_clients: int
    local_devices: int
    """Devices per client (every client has as many)."""

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
