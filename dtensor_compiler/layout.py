"""`Layout`: how a tensor lies on a `Mesh`, the public face of `ir.sharding.Sharding`.

One spec per tensor dim: a mesh dim name, `UNSHARDED` (or None, as in JAX), `MATCH` (relayout
targets only: keep the input's spec), or a tuple of mesh dim names (the dim split over several
mesh dims, major to minor). A tensor is replicated over every mesh dim its specs do not name.
A layout may also carry pending partial reductions
(``Layout([...], mesh, partial={"tp": "sum"})``): the value is what applying them gives, one
mesh dim at a time in the mesh's dim order (with ``partial={"dp": "max", "tp": "sum"}`` on a
``dp, tp`` mesh, the sum over tp of the max over dp); see `ir.sharding`.

A dim need not divide by its shards: a dim of ``n`` over ``k`` shards is cut in blocks of
``ceil(n / k)``, block ``r`` holding ``[r*c, min(n, (r+1)*c))``, so the trailing blocks are
short or empty (5 over 4: 2, 2, 1, 0); over several mesh dims the blocks are flat over their
product (`ir.geometry`; `block_shapes` lists every device's).

Text form (the reference's, extended): ``sharding_specs:dp,unsharded, mesh:<mesh string>``;
a multi-dim spec is written ``x*y`` and partials add ``partial:tp=sum;x=max, `` before ``mesh:``.

Besides these static layouts, as the reference has (`LayoutType`):

- a *single-device* layout is one on a single-device mesh (`Mesh.from_device`): the tensor is
  an ordinary array on that device. `Layout.from_single_device_mesh` and `Layout.from_device`
  make one without a rank, which takes the rank of whatever tensor it is given (`for_rank`);
  all single-device layouts on one mesh are equal. Text: ``maximal:true, mesh:<device>``.
- a *parted* layout (`to_parted`) lays the tensor out in the same blocks as its static
  layout, but marks the blocks as independent parts rather than pieces of one global value.
  DTensors hold, pack, unpack and relayout parted values like static ones; compiled
  functions and checkpoints take static layouts only (the reference's semantics of computing on
  parts is itself unsettled). Text: ``parted:dp,unsharded, mesh:<mesh string>``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence

import numpy as np

from dtensor_compiler.errors import LayoutError, MeshError
from dtensor_compiler.ir import geometry
from dtensor_compiler.ir.sharding import ReduceOp, Sharding
from dtensor_compiler.mesh import Mesh

UNSHARDED = "unsharded"
MATCH = "match"

Spec = str | tuple[str, ...]


class LayoutType(enum.Enum):
    """What a layout describes: one global tensor in blocks (`STATIC`), independent parts in
    those blocks (`PARTED`), or an ordinary array on one device (`SINGLE_DEVICE`)."""

    STATIC = "static"
    PARTED = "parted"
    SINGLE_DEVICE = "single_device"


_SINGLE_DEVICE_PREFIX = "maximal:true,"
_PARTED_PREFIX = "parted:"
_STATIC_PREFIX = "sharding_specs:"


class Layout:
    """How a tensor lies on a mesh: one spec per tensor dim (a mesh dim name, a tuple of mesh dim
    names, UNSHARDED or MATCH) and optional pending reductions (`partial`, mesh dim to
    ``sum``/``max``/``min``/``prod``). Immutable; equal layouts have equal `to_string` text. Raises
    LayoutError for an unknown or repeated mesh dim. `parted` makes the parted layout of these
    specs (as `to_parted` does)."""
    def __init__(self, sharding_specs: Sequence[Spec | None], mesh: Mesh,
                 partial: Mapping[str, str] | None = None, *, parted: bool = False) -> None:
        if not isinstance(mesh, Mesh):
            raise LayoutError(f"mesh is not a valid Mesh object: {mesh!r}")
        if isinstance(sharding_specs, str):
            raise LayoutError("sharding_specs must be a list of specs, one per tensor dim, "
                              f"not the string {sharding_specs!r}")
        specs: list[Spec] = []
        used: list[str] = []
        for i, spec in enumerate(sharding_specs):
            if spec is None:
                spec = UNSHARDED
            if not isinstance(spec, (str, tuple, list)):
                raise LayoutError(f"sharding spec {i} is {spec!r}; a spec is a mesh dim name, "
                                  "UNSHARDED (or None), MATCH or a tuple of mesh dim names")
            names = (spec,) if isinstance(spec, str) else tuple(spec)
            if isinstance(spec, str) and spec in (UNSHARDED, MATCH):
                specs.append(spec)
                continue
            if not names:
                raise LayoutError("an empty spec tuple is not allowed; use UNSHARDED")
            for n in names:
                if not isinstance(n, str) or n not in mesh:
                    raise LayoutError(
                        f"A dimension sharding must either be a valid mesh dimension or "
                        f"UNSHARDED; got {n!r}, mesh dims are {mesh.dim_names}")
                if n in used:
                    raise LayoutError(f"Mesh dimensions must be unique in a layout: {n!r} is "
                                      f"used twice in {list(sharding_specs)}")
                used.append(n)
            specs.append(names[0] if len(names) == 1 else names)
        reductions: dict[str, ReduceOp] = {}
        for m, op in (partial or {}).items():
            if m not in mesh:
                raise LayoutError(f"partial mesh dim {m!r} is not in mesh dims {mesh.dim_names}")
            if m in used:
                raise LayoutError(f"mesh dim {m!r} cannot both shard a dim and be partial")
            try:
                reductions[m] = ReduceOp.parse(op)
            except ValueError as e:
                raise LayoutError(f"partial reduction on {m!r}: {e}") from None
        if parted and (reductions or mesh.is_single_device() or MATCH in specs):
            what = ("pending reductions" if reductions else "a single-device mesh"
                    if mesh.is_single_device() else "MATCH specs")
            raise LayoutError(f"a parted layout cannot have {what}: its parts are values of "
                              "their own")
        self._specs = specs
        self._mesh = mesh
        self._parted = parted
        self._partial = dict(sorted(reductions.items()))
        self._sharding = None if MATCH in specs else Sharding(
            tuple(() if s == UNSHARDED else (s,) if isinstance(s, str) else tuple(s)
                  for s in specs), tuple(self._partial.items()))
        self._text = self._string()
        """A layout never changes, so its text form (its identity) is computed once."""

    # -- factories -----------------------------------------------------------------------------
    @classmethod
    def replicated(cls, mesh: Mesh, rank: int) -> Layout:
        """A layout of `rank` dims, every one whole on every device of `mesh`."""
        return cls([UNSHARDED] * rank, mesh)

    @classmethod
    def batch_sharded(cls, mesh: Mesh, batch_dim: str, rank: int, axis: int = 0) -> Layout:
        """A layout of `rank` dims with dim `axis` split over mesh dim `batch_dim`, the others
        whole."""
        specs: list[Spec] = [UNSHARDED] * rank
        if not -rank <= axis < rank:
            raise LayoutError(f"axis {axis} is out of range for rank {rank}")
        specs[axis] = batch_dim
        return cls(specs, mesh)

    @classmethod
    def inner_sharded(cls, mesh: Mesh, inner_dim: str, rank: int) -> Layout:
        """A layout of `rank` dims with the last dim split over mesh dim `inner_dim`."""
        return cls.batch_sharded(mesh, inner_dim, rank, axis=rank - 1)

    @classmethod
    def from_single_device_mesh(cls, mesh: Mesh) -> Layout:
        """The single-device layout on `mesh` (a `Mesh.from_device` mesh), of no rank until a
        tensor is given it."""
        if not mesh.is_single_device():
            raise LayoutError(f"from_single_device_mesh needs a single-device mesh "
                              f"(Mesh.from_device), got {mesh.short_text()}")
        return cls([], mesh)

    @classmethod
    def from_device(cls, device: str) -> Layout:
        """The single-device layout on `device` (``Mesh.from_device(device)``)."""
        return cls.from_single_device_mesh(Mesh.from_device(device))

    def to_parted(self) -> Layout:
        """The parted layout of these specs: the same blocks, as independent parts."""
        return Layout(self._specs, self._mesh, self._partial, parted=True)

    def for_rank(self, rank: int) -> Layout:
        """This layout for a tensor of `rank` dims: a single-device layout takes any rank
        (every dim whole); any other layout is returned as it is."""
        if self.is_single_device() and self.rank != rank:
            return Layout([UNSHARDED] * rank, self._mesh)
        return self

    @classmethod
    def from_sharding(cls, sharding: Sharding, mesh: Mesh) -> Layout:
        """The layout on `mesh` of the compiler's `Sharding` (its dims and pending reductions)."""
        specs = [UNSHARDED if not d else d[0] if len(d) == 1 else d for d in sharding.dims]
        return cls(specs, mesh, sharding.partial_map)

    # -- properties ----------------------------------------------------------------------------
    @property
    def sharding_specs(self) -> list[Spec]:
        """One spec per tensor dim, as given (None became UNSHARDED)."""
        return list(self._specs)

    @property
    def mesh(self) -> Mesh:
        """The mesh the layout is on."""
        return self._mesh

    @property
    def rank(self) -> int:
        """The number of tensor dims."""
        return len(self._specs)

    @property
    def partial(self) -> dict[str, ReduceOp]:
        """The pending reductions, mesh dim to reduction, in mesh dim name order."""
        return dict(self._partial)

    @property
    def shape(self) -> list[int]:
        """The mesh's shape (one size per mesh dim)."""
        return self._mesh.shape()

    @property
    def sharding(self) -> Sharding:
        """The compiler's view. Raises LayoutError if a spec is MATCH."""
        if self._sharding is None:
            raise LayoutError("a layout with MATCH specs is only valid as a relayout target")
        return self._sharding

    def num_shards(self, idx: int) -> int:
        """How many blocks tensor dim `idx` is split into (1 when whole, -1 for MATCH; 1 for
        any dim of a single-device layout of no rank)."""
        if self._any_rank():
            return 1
        spec = self._specs[idx]
        if spec == MATCH:
            return -1
        if spec == UNSHARDED:
            return 1
        names = (spec,) if isinstance(spec, str) else spec
        return int(np.prod([self._mesh.dim_size(n) for n in names]))

    def is_fully_replicated(self) -> bool:
        """True when every dim is whole and nothing is pending."""
        return all(s == UNSHARDED for s in self._specs) and not self._partial

    def is_batch_parallel(self) -> bool:
        """True when only the first dim is sharded."""
        return bool(self._specs) and self._specs[0] != UNSHARDED and all(
            s == UNSHARDED for s in self._specs[1:])

    @property
    def type(self) -> LayoutType:
        """`LayoutType.SINGLE_DEVICE` on a single-device mesh, `PARTED` after `to_parted`,
        else `STATIC`."""
        if self._mesh.is_single_device():
            return LayoutType.SINGLE_DEVICE
        return LayoutType.PARTED if self._parted else LayoutType.STATIC

    def is_single_device(self) -> bool:
        """True for a layout on a single-device mesh."""
        return self._mesh.is_single_device()

    def _any_rank(self) -> bool:
        """Whether this is a single-device layout of no rank, which fits a tensor of any."""
        return self.is_single_device() and not self._specs

    def is_parted(self) -> bool:
        """True for a parted layout (`to_parted`)."""
        return self._parted

    def delete(self, dims: Sequence[int]) -> Layout:
        """This layout without the tensor dims `dims` (negative indices allowed; a
        single-device layout of no rank stays as it is)."""
        if self._any_rank():
            return self
        drop = {d % self.rank for d in dims}
        return Layout([s for i, s in enumerate(self._specs) if i not in drop], self._mesh,
                      self._partial, parted=self._parted)

    # -- shapes --------------------------------------------------------------------------------
    def _check_shape(self, shape: Sequence[int]) -> None:
        if len(shape) != self.rank and not self._any_rank():
            raise LayoutError(f"layout {self.short_text()} has rank {self.rank} but the shape "
                              f"{list(shape)} has rank {len(shape)}")

    def local_shape_from_global_shape(self, global_shape: Sequence[int]) -> tuple[int, ...]:
        """The shape every device's block of a tensor of `global_shape` has room for: a dim of
        ``n`` over ``k`` shards gives ``ceil(n / k)``; where ``k`` does not divide ``n``, the
        trailing blocks hold fewer valid elements (see `block_shapes`)."""
        self._check_shape(global_shape)
        shape = tuple(int(s) for s in global_shape)
        if self.is_single_device():
            return shape  # the whole tensor on its one device
        return geometry.local_shape(shape, self.sharding.dims, self._mesh.mesh_shape())

    def global_shape_from_local_shape(self, local_shape: Sequence[int]) -> tuple[int, ...]:
        """The global shape of an even tensor whose per-device blocks have `local_shape` (each
        dim times its shard count; an uneven tensor's global shape is not determined by its
        block shape)."""
        self._check_shape(local_shape)
        return tuple(int(n) * self.num_shards(i) for i, n in enumerate(local_shape))

    def block_shapes(self, global_shape: Sequence[int]) -> list[tuple[int, ...]]:
        """For each device (by flat offset), the shape of the valid part of its block of a
        tensor of `global_shape`: short or empty on the trailing blocks of an uneven dim."""
        self._check_shape(global_shape)
        shape = tuple(int(s) for s in global_shape)
        if any(n < 0 for n in shape):
            raise LayoutError(f"shape {list(shape)} has a negative dim")
        if self.is_single_device():
            return [shape]
        mesh = self._mesh.mesh_shape()
        return [geometry.device_block(shape, self.sharding.dims, mesh,
                                      geometry.device_coords(dev, mesh))[1]
                for dev in range(self._mesh.size)]

    def offset_to_shard(self) -> list[tuple[int, ...]]:
        """For each device (by flat offset), the block index of each tensor dim it holds."""
        mesh = self._mesh.mesh_shape()
        dims = self.sharding.dims
        out = []
        for dev in range(self._mesh.size):
            loc = dict(zip(self._mesh.dim_names, self._mesh.device_location(
                dev + self._mesh.min_global_device_id())))
            out.append(tuple(geometry.block_number(d, loc.__getitem__, mesh, 0) for d in dims))
        return out

    def offset_tuple_to_global_index(self, offset_tuple: Sequence[int]) -> int:
        """The index of the shard `offset_tuple` (one block number per tensor dim) in the shard
        grid linearized row-major, as the reference computes it: ``(1, 0)`` on
        ``[x, unsharded]`` over a 2x2 mesh is 1."""
        if len(offset_tuple) != self.rank:
            raise LayoutError(f"offset tuple {tuple(offset_tuple)} has {len(offset_tuple)} "
                              f"entries, the layout has rank {self.rank}")
        index = 0
        for i, block in enumerate(offset_tuple):
            shards = self.num_shards(i)
            if not 0 <= block < shards:
                raise LayoutError(f"no shard {tuple(offset_tuple)}: dim {i} has {shards} "
                                  "shards")
            index = index * shards + int(block)
        return index

    # -- text ----------------------------------------------------------------------------------
    def _spec_text(self, spec: Spec) -> str:
        return spec if isinstance(spec, str) else "*".join(spec)

    def to_string(self) -> str:
        """The text form, ``sharding_specs:dp,unsharded, mesh:<mesh text>`` (with ``partial:tp=sum,
        `` before ``mesh:`` when something is pending; ``parted:`` in place of
        ``sharding_specs:`` for a parted layout; ``maximal:true, mesh:<device>`` for a
        single-device one, whatever its rank); `from_string` reads it back."""
        return self._text

    def _string(self) -> str:
        mesh = self._mesh.to_string()
        if self.is_single_device():
            return f"{_SINGLE_DEVICE_PREFIX} mesh:{mesh}"
        specs = "".join(self._spec_text(s) + "," for s in self._specs)
        partial = ""
        if self._partial:
            partial = "partial:" + ";".join(f"{m}={op}" for m, op in self._partial.items()) + ", "
        prefix = _PARTED_PREFIX if self._parted else _STATIC_PREFIX
        return f"{prefix}{specs} {partial}mesh:{mesh}"

    @staticmethod
    def from_string(text: str) -> Layout:
        """The layout `to_string` wrote as `text`; LayoutError for malformed text."""
        head, sep, mesh_text = text.partition(" mesh:")
        prefix = next((p for p in (_STATIC_PREFIX, _PARTED_PREFIX, _SINGLE_DEVICE_PREFIX)
                       if head.startswith(p)), None)
        if not sep or prefix is None:
            raise LayoutError(f"layout string must look like 'sharding_specs:x,unsharded, "
                              f"mesh:<mesh>', got {text!r}")
        try:
            mesh = Mesh.from_string(mesh_text)
        except MeshError as e:
            raise LayoutError(f"bad mesh in layout string: {e}") from None
        if prefix == _SINGLE_DEVICE_PREFIX:
            if head != _SINGLE_DEVICE_PREFIX:
                raise LayoutError(f"a single-device layout string is 'maximal:true, "
                                  f"mesh:<device>', got {text!r}")
            return Layout.from_single_device_mesh(mesh)
        specs_text, _, partial_text = head[len(prefix):].partition(" partial:")
        parts = specs_text.split(",")
        if parts[-1] == "":
            parts.pop()
        specs: list[Spec] = [tuple(s.split("*")) if "*" in s else s for s in parts]
        partial = {}
        for item in filter(None, partial_text.rstrip(", ").split(";")):
            m, _, op = item.partition("=")
            partial[m] = op
        return Layout(specs, mesh, partial, parted=prefix == _PARTED_PREFIX)

    def short_text(self) -> str:
        """Compact form for messages: ``{dp, -} partial(tp:sum)``, ``{dp, -} parted``."""
        text = self.sharding.text() if MATCH not in self._specs else str(self._specs)
        return f"{text} parted" if self._parted else text

    # -- identity ------------------------------------------------------------------------------
    def __eq__(self, other: object) -> bool:
        return self is other or isinstance(other, Layout) and self._text == other._text

    def __hash__(self) -> int:
        return hash(self._text)

    def __reduce__(self):
        return (Layout.from_string, (self.to_string(),))

    def __repr__(self) -> str:
        return f"Layout.from_string({self.to_string()!r})"

    def __str__(self) -> str:
        return self.to_string()
