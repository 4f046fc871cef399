"""The alpha-beta cost model for collectives and local data movement.

A collective over a group of n devices along the named mesh dims pays the latency (alpha) and
bandwidth (beta) of the slowest of those dims, plus a fixed launch cost, so that one
all_reduce is cheaper than the reduce_scatter + all_gather it equals in bytes. A collective's
definition (`CollectiveDef`) gives its number of passes p (all_reduce 2; all_gather,
reduce_scatter and all_to_all 1), the algorithms that may run it (`Algorithm`), and which
per-device buffer B is charged (every device's result block for reduce_scatter, every
device's operand block for all_gather, the operand for all_to_all, else the result; padding
of uneven blocks included). It is charged its fastest algorithm, as collective libraries
choose by message size:

    ring:                  p·(n-1)·alpha + p·(n-1)/n · B/bw
    halving and doubling:  p·ceil(log2 n)·alpha + p·(n-1)/n · B/bw
                           (all_reduce, all_gather, reduce_scatter)
    whole exchange:        ceil(log2 n)·(alpha + B/bw)     (all_reduce)
    Bruck:                 ceil(log2 n)·(alpha + B/(2·bw))  (all_to_all)

plus the launch. Under this model halving and doubling are never slower than the ring (which
real networks favour for large messages, for the link contention the model does not see), so
latency grows with log2 n: a [rows, 1] statistic's all_reduce over 8 devices is not priced
above gathering a megabyte, and one collective over a group of mesh dims beats one per dim
unless a dim's link is slower. The local layout changes (p = 0: local_slice copies a block,
make_partial writes identities) cost ``B / memory_bw``. Defaults are NVLink-class links;
`CostModel.with_link` sets a slower dim (for example a cross-host ``dp``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from dtensor_compiler.ir.collective import Algorithm, CollectiveDef
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
        return self.launch + min(
            _algorithm_time(a, collective.ring_passes, n, alpha, nbytes / bw)
            for a in collective.algorithms)

    def read_time(self, nbytes: int) -> float:
        """Seconds for the devices to read `nbytes` from checkpoint storage, all together."""
        return nbytes / self.storage_bandwidth

    def compute_time(self, nbytes: int) -> float:
        """Seconds to stream `nbytes` through memory once (elementwise work, copies)."""
        return nbytes / self.memory_bandwidth


def _algorithm_time(algorithm: Algorithm, passes: int, n: int, alpha: float, transfer: float
                    ) -> float:
    """Seconds, without the launch, of `algorithm` over `n` devices for a collective of
    `passes` passes whose charged buffer takes `transfer` seconds to send once."""
    steps = math.ceil(math.log2(n))
    if algorithm is Algorithm.RING:
        return passes * ((n - 1) * alpha + (n - 1) / n * transfer)
    if algorithm is Algorithm.HALVING_DOUBLING:
        return passes * (steps * alpha + (n - 1) / n * transfer)
    if algorithm is Algorithm.WHOLE_EXCHANGE:
        return steps * (alpha + transfer)
    assert algorithm is Algorithm.BRUCK
    return steps * (alpha + transfer / 2)


DEFAULT_COST_MODEL = CostModel()
