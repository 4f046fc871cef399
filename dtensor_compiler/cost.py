"""The alpha-beta cost model for collectives and local data movement.

Times follow ring algorithms over a group of n devices along the named mesh dims, with the
latency (alpha) and bandwidth (beta) of the slowest of those dims, plus a fixed launch cost per
collective, so that one all_reduce is cheaper than the reduce_scatter + all_gather it equals
in bytes:

    all_gather      launch + (n-1)·alpha + (n-1)/n · result_bytes / bw
    reduce_scatter  launch + (n-1)·alpha + (n-1)/n · input_bytes / bw
    all_reduce      launch + 2(n-1)·alpha + 2(n-1)/n · bytes / bw
    all_to_all      launch + (n-1)·alpha + (n-1)/n · bytes / bw
    local_slice     result_bytes / memory_bw   (a copy, no communication)
    make_partial    result_bytes / memory_bw   (identities written, no communication)

`bytes` are per-device buffer sizes. Defaults are NVLink-class links; `CostModel.with_link`
sets a slower dim (for example a cross-host ``dp``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dtensor_compiler.ir.opdefs import LOCAL_LAYOUT_CHANGES
from dtensor_compiler.ir.sharding import MeshShape


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

    def link(self, mesh_dim: str) -> Link:
        for name, link in self.links:
            if name == mesh_dim:
                return link
        return self.default

    def with_link(self, mesh_dim: str, link: Link) -> CostModel:
        rest = tuple((n, lk) for n, lk in self.links if n != mesh_dim)
        return CostModel(self.default, rest + ((mesh_dim, link),), self.launch,
                         self.memory_bandwidth)

    def collective_time(self, kind: str, mesh_dims: tuple[str, ...], mesh: MeshShape,
                        nbytes: int) -> float:
        """Estimated seconds for one collective; `nbytes` as in the module docstring."""
        if kind in LOCAL_LAYOUT_CHANGES:
            return nbytes / self.memory_bandwidth
        n = mesh.group_size(mesh_dims)
        if n == 1:
            return 0.0
        alpha = max(self.link(m).latency for m in mesh_dims)
        bw = min(self.link(m).bandwidth for m in mesh_dims)
        factor = 2.0 if kind == "all_reduce" else 1.0
        return self.launch + factor * ((n - 1) * alpha + (n - 1) / n * nbytes / bw)

    def compute_time(self, nbytes: int) -> float:
        """Seconds to stream `nbytes` through memory once (elementwise work, copies)."""
        return nbytes / self.memory_bandwidth


DEFAULT_COST_MODEL = CostModel()
