"""The alpha-beta cost model for collectives and local data movement.

Times follow ring algorithms over a group of n devices along the named mesh dims, with the
latency (alpha) and bandwidth (beta) of the slowest of those dims, plus a fixed launch cost per
collective, so that one all_reduce is cheaper than the reduce_scatter + all_gather it equals
in bytes. A collective's definition (`CollectiveDef`) gives the number of ring passes p and
which per-device buffer is charged (every device's result block for reduce_scatter, every
device's operand block for all_gather, the operand for all_to_all, else the result; padding
of uneven blocks included):

    launch + p·(n-1)·alpha + p·(n-1)/n · charged_bytes / bw

with p = 2 for all_reduce and 1 for all_gather, reduce_scatter and all_to_all. All but
all_to_all may instead run over a binary tree (up to a root and back down: a reduce then a
broadcast, a reduce then a scatter, a gather then a broadcast), which pays fewer latencies
and sends the charged bytes about twice; they are charged the faster of the two,

    launch + min(ring, 2·ceil(log2 n)·alpha + 2·charged_bytes / bw),

as collective libraries choose by message size: the tree wins for small messages, so that
a [rows, 1] statistic's all_reduce over 8 devices is not priced above gathering a
megabyte. The local layout changes (p = 0: local_slice copies a block, make_partial writes
identities) cost ``charged_bytes / memory_bw``. Defaults are NVLink-class links;
`CostModel.with_link` sets a slower dim (for example a cross-host ``dp``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from dtensor_compiler.ir.collective import CollectiveDef
from dtensor_compiler.ir.mesh_shape import MeshShape


@dataclass(frozen=True)
class Link:
    latency: float = 5e-6
    """Seconds per ring step (alpha)."""
    bandwidth: float = 100e9
    """Bytes per second per device (1/beta)."""


@dataclass(frozen=True)
class CostModel:
    default: Link = field(default_factory=Link)
    links: tuple[tuple[str, Link], ...] = ()
    """Per-mesh-dim overrides of `default`."""
    launch: float = 10e-6
    """Fixed seconds per collective launch."""
    memory_bandwidth: float = 1e12
    """Bytes per second for local copies and elementwise work."""
    storage_bandwidth: float = 2e9
    """Bytes per second that all devices together read from checkpoint storage (one disk or
    filesystem they share)."""

    def link(self, mesh_dim: str) -> Link:
        for name, link in self.links:
            if name == mesh_dim:
                return link
        return self.default

    def with_link(self, mesh_dim: str, link: Link) -> CostModel:
        rest = tuple((n, lk) for n, lk in self.links if n != mesh_dim)
        return replace(self, links=rest + ((mesh_dim, link),))

    def collective_time(self, collective: CollectiveDef, mesh_dims: tuple[str, ...],
                        mesh: MeshShape, in_bytes: int, out_bytes: int) -> float:
        """Estimated seconds for one collective over `mesh_dims` whose per-device operand and
        result buffers hold `in_bytes` and `out_bytes` (see the module docstring)."""
        n = mesh.group_size(mesh_dims)
        nbytes = collective.charged_bytes(in_bytes, out_bytes, n)
        if collective.ring_passes == 0:
            return nbytes / self.memory_bandwidth
        if n == 1:
            return 0.0
        alpha = max(self.link(m).latency for m in mesh_dims)
        bw = min(self.link(m).bandwidth for m in mesh_dims)
        passes = collective.ring_passes
        ring = passes * ((n - 1) * alpha + (n - 1) / n * nbytes / bw)
        if not collective.tree_bytes:
            return self.launch + ring
        tree = 2 * math.ceil(math.log2(n)) * alpha + collective.tree_bytes * nbytes / bw
        return self.launch + min(ring, tree)

    def read_time(self, nbytes: int) -> float:
        """Seconds for the devices to read `nbytes` from checkpoint storage, all together."""
        return nbytes / self.storage_bandwidth

    def compute_time(self, nbytes: int) -> float:
        """Seconds to stream `nbytes` through memory once (elementwise work, copies)."""
        return nbytes / self.memory_bandwidth


DEFAULT_COST_MODEL = CostModel()
