"""`Mesh`: named dims over a grid of devices, with the reference system's semantics.

Device ids are row-major over the mesh coordinates (last dim fastest) and must be consecutive.
The text form is ``<name>|<dim>=<size>,...|<global ids>|<local ids>|<local devices>[|<global
devices>]``, e.g. ``|dp=2,tp=4|0,...,7|0,...,7|/job:localhost/replica:0/task:0/device:CPU:0,...``.
On the simulated platform every device is a virtual CPU of this process.

A mesh with no dims is a single-device mesh (`Mesh.from_device`): one device, on which a
tensor is an ordinary array; its text form is the device's name.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import NamedTuple, cast

import numpy as np

from dtensor_compiler.errors import MeshError
from dtensor_compiler.ir.sharding import MeshShape
from dtensor_compiler.runtime import clients

RESERVED_DIM_NAMES = ("any", "match", "unsharded", "scalar")
_DIM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_DEVICE = re.compile(r"/job:[^/]+(/replica:\d+)?/task:\d+/device:([A-Za-z]+):\d+\Z")


def cpu_device_name(i: int, task: int = 0, job: str = "localhost") -> str:
    return f"/job:{job}/replica:0/task:{task}/device:CPU:{i}"


class MeshDimension(NamedTuple):
    """One dim of a mesh: its name and its size."""

    name: str
    size: int


class Mesh:
    """A logical mesh of devices: ``Mesh(dim_names, global_device_ids, local_device_ids,
    local_devices, mesh_name='', global_devices=None, use_xla_spmd=False)``."""

    def __init__(self, dim_names: Sequence[str], global_device_ids: np.ndarray,
                 local_device_ids: Sequence[int], local_devices: Sequence[str],
                 mesh_name: str = "", global_devices: Sequence[str] | None = None,
                 use_xla_spmd: bool = False) -> None:
        if not isinstance(global_device_ids, np.ndarray):
            raise MeshError("global_device_ids must be an ndarray")
        if global_device_ids.size == 0:
            raise MeshError("global_device_ids must be non-empty")
        dim_names = list(dim_names)
        if len(dim_names) != global_device_ids.ndim:
            raise MeshError(f"mesh has {len(dim_names)} dim names {dim_names} but "
                            f"global_device_ids has {global_device_ids.ndim} dims")
        for name in dim_names:
            if not isinstance(name, str) or not _DIM_NAME.match(name):
                raise MeshError(f"mesh dim name {name!r} is not an identifier")
            if name in RESERVED_DIM_NAMES:
                raise MeshError(f"mesh dim name {name!r} is reserved")
        dupes = sorted({n for n in dim_names if dim_names.count(n) > 1})
        if dupes:
            raise MeshError(f"mesh dim names must be unique; repeated: {dupes}")
        flat = global_device_ids.reshape(-1)
        if not np.array_equal(flat - flat[0], np.arange(flat.size)):
            raise MeshError("global_device_ids must sequentially increase (row-major, "
                            f"consecutive); got {flat.tolist()}")
        if not isinstance(local_device_ids, (list, tuple)):
            raise MeshError("local_device_ids must be a list")
        if not isinstance(local_devices, (list, tuple)):
            raise MeshError("local_devices must be a list")
        names = [str(d) for d in local_devices]
        one_cpu = len(set(names)) == 1 and ":CPU:" in names[0].upper()
        if len(set(names)) != len(names) and not one_cpu:  # one host CPU may stand for all
            raise MeshError("Duplicate devices found in mesh specification "
                            f"{sorted({d for d in names if names.count(d) > 1})}.")
        if len(local_device_ids) != len(local_devices):
            raise MeshError(f"{len(local_device_ids)} local_device_ids but "
                            f"{len(local_devices)} local_devices")
        if len(local_device_ids) > flat.size:
            raise MeshError("more local device ids than global device ids")
        bad = [i for i in local_device_ids if i not in set(flat.tolist())]
        if bad:
            raise MeshError(f"local device ids {bad} are not global device ids")
        devices = list(local_devices) or list(global_devices or [])
        if not devices:
            raise MeshError("Empty list of devices not allowed.")
        types = set()
        for d in devices:
            m = _DEVICE.match(str(d))
            if not m:
                raise MeshError(f"device name {d!r} is not of the form "
                                "/job:<job>/replica:<r>/task:<t>/device:<TYPE>:<i>")
            types.add(m.group(2).upper())
        if len(types) > 1:
            raise MeshError(f"Devices containing multiple device_types: {sorted(types)}")
        if use_xla_spmd:  # TPU meshes only, and there are no TPUs here
            raise MeshError(f"XLA SPMD is not currently not supported for "
                            f"{next(iter(types))} mesh.")
        self._dim_names = tuple(dim_names)
        self._ids = global_device_ids.astype(np.int64)
        self._local_ids = [int(i) for i in local_device_ids]
        self._local_devices = [str(d) for d in local_devices]
        self._global_devices = [str(d) for d in global_devices] if global_devices else []
        self._name = mesh_name
        self._device_type = types.pop()
        self._shape = MeshShape(tuple(zip(self._dim_names, (int(s) for s in self._ids.shape))))
        self._text = self._string()
        """A mesh never changes, so its text form (its identity) is computed once."""

    # -- properties of the reference API -----------------------------------------------------
    @property
    def dim_names(self) -> list[str]:
        """The mesh dim names, major to minor."""
        return list(self._dim_names)

    @property
    def name(self) -> str:
        """The mesh's name ('' when unnamed)."""
        return self._name

    @property
    def size(self) -> int:
        """The number of devices."""
        return int(self._ids.size)

    @property
    def strides(self) -> list[int]:
        """Row-major strides of the mesh dims, in devices."""
        shape = self.shape()
        return [int(np.prod(shape[i + 1:])) for i in range(len(shape))]

    def shape(self) -> list[int]:
        """The size of each mesh dim, major to minor."""
        return list(self._ids.shape)

    def dim_size(self, name: str) -> int:
        """The size of mesh dim `name`; MeshError when the mesh has no such dim."""
        if name not in self._dim_names:
            raise MeshError(f"mesh has no dim {name!r}; dims are {self.dim_names}")
        return self.shape()[self._dim_names.index(name)]

    def __getitem__(self, name: str) -> MeshDimension:
        """The mesh dim `name` with its size (a named pair: ``name, size = mesh["x"]``)."""
        return MeshDimension(name, self.dim_size(name))

    def contains_dim(self, name: str) -> bool:
        """Whether the mesh has a dim called `name`."""
        return name in self._dim_names

    def __contains__(self, name: object) -> bool:
        return name in self._dim_names

    def device_type(self) -> str:
        """The device type of the mesh's devices (``CPU`` on the simulated mesh)."""
        return self._device_type

    def global_device_ids(self) -> np.ndarray:
        """The device ids laid out in the mesh's shape (a copy)."""
        return self._ids.copy()

    def local_device_ids(self) -> list[int]:
        """The ids of the devices local to this process."""
        return list(self._local_ids)

    def local_devices(self) -> list[str]:
        """The names of the devices local to this process."""
        return list(self._local_devices)

    def global_devices(self) -> list[str]:
        """The names of every device of the mesh, where they were given."""
        return list(self._global_devices)

    def num_local_devices(self) -> int:
        """How many of the mesh's devices are local to this process."""
        return len(self._local_ids)

    def min_global_device_id(self) -> int:
        """The smallest device id, the mesh's first device."""
        return int(self._ids.reshape(-1)[0])

    def is_remote(self) -> bool:
        """True when no device of a non-empty mesh is local to this process."""
        return not self._local_ids and self.size > 0

    def is_single_device(self) -> bool:
        """True for a mesh of one device and no dims (`from_device`)."""
        return not self._dim_names

    @property
    def single_device(self) -> str:
        """The device of a single-device mesh ('' for any other)."""
        return self._local_devices[0] if self.is_single_device() and self._local_devices \
            else ""

    @staticmethod
    def from_device(device: str) -> Mesh:
        """The single-device mesh of `device` (a full name, or a short ``CPU:0`` one, which
        becomes ``/job:localhost/replica:0/task:0/device:CPU:0``): no dims, device id 0."""
        if not isinstance(device, str) or not device:
            raise MeshError(f"a single-device mesh needs a device name, got {device!r}")
        return Mesh([], np.array(0), [0], [full_device_name(device)])

    def use_xla_spmd(self) -> bool:
        """Always False: there is no XLA here."""
        return False

    def coords(self, device_id: int) -> np.ndarray:
        """Mesh coordinates of a device (row-major)."""
        idx = device_id - self.min_global_device_id()
        return (idx // np.array(self.strides)) % np.array(self.shape())

    def device_location(self, device_id: int) -> list[int]:
        """The coordinates of device `device_id` on the mesh, one per mesh dim."""
        return [int(c) for c in self.coords(device_id)]

    def unravel_index(self) -> dict[int, dict[str, int]]:
        """For each device id, its coordinate along each mesh dim by name."""
        return {int(i): dict(zip(self._dim_names, self.device_location(int(i))))
                for i in self._ids.reshape(-1)}

    def local_device_locations(self) -> list[dict[str, int]]:
        """The coordinates, by mesh dim name, of each local device."""
        return [dict(zip(self._dim_names, self.device_location(i))) for i in self._local_ids]

    def host_mesh(self) -> Mesh:
        """The same mesh on host CPUs, unnamed (as the reference's: a mesh of CPU devices
        with the same dims and ids)."""
        devices = [re.sub(r"device:[A-Za-z]+:", "device:CPU:", d) for d in self._local_devices]
        return Mesh(self._dim_names, self._ids.copy(), self._local_ids, devices)

    # -- compiler view --------------------------------------------------------------------------
    def mesh_shape(self) -> MeshShape:
        """The (name, size) pairs the compiler works with."""
        return self._shape

    # -- text form ------------------------------------------------------------------------------
    def to_string(self) -> str:
        """The text form (name, dims, device ids, local ids and devices, separated by ``|``;
        a single-device mesh's is its device name); `from_string` reads it back."""
        return self._text

    def short_text(self) -> str:
        """Compact form for messages: ``mesh<dp=2, tp=4>``, and ``mesh<dp=2, tp=4> named 'a'``
        for a named mesh, so meshes that differ only by name read differently; ``mesh<> of
        <device>`` for a single-device mesh."""
        text = self._shape.text()
        if self.single_device:
            text = f"{text} of {self.single_device}"
        return f"{text} named {self._name!r}" if self._name else text

    def _string(self) -> str:
        if self.single_device and not self._name and not self._global_devices:
            return self.single_device
        dims = ",".join(f"{n}={s}" for n, s in zip(self._dim_names, self.shape()))
        parts = [self._name, dims, ",".join(str(int(i)) for i in self._ids.reshape(-1)),
                 ",".join(str(i) for i in self._local_ids), ",".join(self._local_devices)]
        if self._global_devices:
            parts.append(",".join(self._global_devices))
        return "|".join(parts)

    @staticmethod
    def from_string(text: str) -> Mesh:
        """The mesh `to_string` wrote as `text` (also the short ``name|dp=2,tp=4|*CPU`` form,
        and a device name for its single-device mesh); MeshError for malformed text."""
        parts = text.split("|")
        if len(parts) == 1:
            return Mesh.from_device(text)
        if len(parts) == 3 and parts[2].startswith("*"):
            name, dims_text, dev_type = parts[0], parts[1], parts[2][1:]
            dims = _parse_dims(dims_text, text)
            n = int(np.prod([s for _, s in dims]))
            devices = [f"/job:localhost/replica:0/task:0/device:{dev_type}:{i}" for i in range(n)]
            return Mesh([d for d, _ in dims], np.arange(n).reshape([s for _, s in dims]),
                        list(range(n)), devices, name)
        if len(parts) not in (5, 6, 7):
            raise MeshError(f"mesh string must have 5 or 6 '|'-separated parts, got "
                            f"{len(parts)}: {text!r}")
        name, dims_text, gids, lids, ldevs = parts[:5]
        gdevs = parts[5] if len(parts) > 5 and parts[5] != "use_xla_spmd" else ""
        dims = _parse_dims(dims_text, text)
        try:
            ids = [int(i) for i in gids.split(",") if i]
            local = [int(i) for i in lids.split(",") if i]
        except ValueError:
            raise MeshError(f"mesh string has non-integer device ids: {text!r}") from None
        shape = [s for _, s in dims]
        if len(ids) != int(np.prod(shape)):
            raise MeshError(f"mesh string has {len(ids)} device ids for shape {shape}")
        return Mesh([d for d, _ in dims], np.array(ids).reshape(shape), local,
                    [d for d in ldevs.split(",") if d], name,
                    [d for d in gdevs.split(",") if d] or None)

    # -- identity -------------------------------------------------------------------------------
    def __eq__(self, other: object) -> bool:
        return self is other or isinstance(other, Mesh) and self._text == other._text

    def __hash__(self) -> int:
        return hash(self._text)

    def __reduce__(self):
        return (Mesh.from_string, (self.to_string(),))

    def __repr__(self) -> str:
        return f"Mesh.from_string({self.to_string()!r})"


def _parse_dims(text: str, whole: str) -> list[tuple[str, int]]:
    out = []
    for item in filter(None, text.split(",")):
        name, sep, size = item.partition("=")
        if not sep or not size.isdigit():
            raise MeshError(f"mesh dim {item!r} is not NAME=SIZE in {whole!r}")
        out.append((name, int(size)))
    return out


_SHORT_DEVICE = re.compile(r"(?:/?device:)?([A-Za-z]+):(\d+)\Z")


def full_device_name(name: str, task: int = 0, job: str = "localhost") -> str:
    """A device name in full (``/job:<job>/replica:0/task:<task>/device:CPU:0``): as given
    when it is one already, else from a short ``CPU:0`` or ``/device:cpu:0`` form on task
    `task` of `job`. MeshError for anything else."""
    text = str(name)
    if _DEVICE.match(text):
        return text
    short = _SHORT_DEVICE.match(text)
    if short is None:
        raise MeshError(f"device name {text!r} is neither /job:<job>/replica:<r>/task:<t>/"
                        "device:<TYPE>:<i> nor the short <TYPE>:<i>")
    return f"/job:{job}/replica:0/task:{task}/device:{short.group(1).upper()}:{short.group(2)}"


def num_simulated_devices() -> int:
    """`DTC_NUM_DEVICES` (default 8): devices of a mesh made without explicit dims."""
    raw = os.environ.get("DTC_NUM_DEVICES", "8")
    if not raw.isdigit() or int(raw) < 1:
        raise MeshError(f"DTC_NUM_DEVICES must be a positive integer, got {raw!r}")
    return int(raw)


def create_mesh(mesh_dims: Sequence[tuple[str, int]] | dict[str, int] | None = None,
                mesh_name: str = "", devices: Sequence[str] | None = None,
                device_type: str | None = None, use_xla_spmd: bool = False) -> Mesh:
    """A single-client mesh of simulated CPU devices (as many as the dims need).

    Without dims: a 1-D mesh ``x`` over this process's logical CPUs (as many as
    `initialize_accelerator_system` was given, else `DTC_NUM_DEVICES`, default 8). Devices may
    be named in short form (``CPU:0``).
    """
    dims: list[tuple[object, ...]]
    if mesh_dims is None:
        dims = [("x", len(devices) if devices else local_cpu_count())]
    elif isinstance(mesh_dims, dict):
        dims = list(mesh_dims.items())
    else:
        dims = [tuple(d) for d in mesh_dims]
    names: list[str] = []
    shape: list[int] = []
    for d in dims:
        if len(d) != 2 or not isinstance(d[1], (int, np.integer)) or d[1] < 1:
            raise MeshError(f"mesh dim {d!r} must be a (name, positive size) pair")
        names.append(cast(str, d[0]))  # Mesh itself rejects a name that is not a str
        shape.append(int(d[1]))
    n = int(np.prod(shape))
    if devices is None:
        kind = (device_type or "CPU").upper()
        devices = [f"/job:localhost/replica:0/task:0/device:{kind}:{i}" for i in range(n)]
    elif len(devices) != n:
        raise MeshError(f"mesh dims {dims} need {n} devices, got {len(devices)}")
    else:
        devices = [full_device_name(d) for d in devices]
    return Mesh(names, np.arange(n).reshape(shape), list(range(n)),
                list(devices), mesh_name, use_xla_spmd=use_xla_spmd)


def local_cpu_count() -> int:
    """This process's logical CPUs: those `initialize_accelerator_system` was given, else the
    simulated host's (`DTC_NUM_DEVICES`)."""
    current = clients.current()
    return current.local_devices if current is not None else num_simulated_devices()
