"""`DTensor`: a distributed value, and the face it shares with `DVariable`.

A DTensor is a global shape, a dtype, a `Layout` and the value's shards, held in the storage
type of the backend that made it (`runtime.backends.Storage`; on the simulated mesh, one
stacked numpy array whose leading axes are the mesh axes along which the value differs). It is
immutable.

Outside a compiled function a distributed value is data, not a numpy array: ``np.asarray(t)``,
``np.array(t)`` and ``t.numpy()`` gather the global value (applying pending partial
reductions), and everything else numpy-like (operators, ufuncs such as ``np.exp(t)``, array
functions such as ``np.concatenate``, indexing) raises a `TypeError` that points at
`dtc.compile`, so no distributed computation silently runs on one device. Unlike the reference
system, gathering a sharded DTensor is allowed.
"""

from __future__ import annotations

from typing import Any, NoReturn

import numpy as np

from dtensor_compiler.errors import DonatedError
from dtensor_compiler.layout import Layout
from dtensor_compiler.mesh import Mesh
from dtensor_compiler.runtime.backends import Storage

DEVICE_NAME = "/job:localhost/replica:0/task:0/device:CUSTOM:0"
"""The name of the (single, simulated) DTensor device, `dtc.device_name()`."""

_OPERATORS: dict[str, str] = {  # method stem -> symbol; each also has a reflected __r...__
    "add": "+", "sub": "-", "mul": "*", "truediv": "/", "floordiv": "//", "mod": "%",
    "pow": "**", "matmul": "@", "and": "&", "or": "|", "xor": "^", "lshift": "<<",
    "rshift": ">>", "divmod": "divmod",
}
_UNREFLECTED_OPERATORS: dict[str, str] = {
    "neg": "unary -", "pos": "unary +", "abs": "abs", "invert": "~", "lt": "<", "le": "<=",
    "gt": ">", "ge": ">=",
}


class DistributedValue:
    """What `DTensor` and `DVariable` share: metadata and gathering read through `as_dtensor`,
    and the rejection of eager numpy math (see the module docstring)."""

    __slots__ = ()
    _what = "a distributed value"

    def as_dtensor(self) -> DTensor:
        """The current value as a DTensor."""
        raise NotImplementedError

    @property
    def layout(self) -> Layout:
        return self.as_dtensor().layout

    @property
    def mesh(self) -> Mesh:
        return self.layout.mesh

    @property
    def shape(self) -> tuple[int, ...]:
        return self.as_dtensor().shape

    @property
    def dtype(self) -> np.dtype:
        return self.as_dtensor().dtype

    @property
    def device(self) -> str:
        """The DTensor device the value lives on (`dtc.device_name()`)."""
        return DEVICE_NAME

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def numpy(self) -> np.ndarray:
        """The global value as a new numpy array."""
        return self.as_dtensor().numpy()

    def __array__(self, dtype: np.dtype | None = None, copy: bool | None = None) -> np.ndarray:
        if copy is False:
            raise ValueError(f"gathering {self._what} always makes a copy; "
                             "np.asarray(..., copy=False) cannot be honoured")
        out = self.numpy()
        return out if dtype is None else out.astype(dtype, copy=False)

    # -- Python numbers from one-element values (gathered, as numpy converts) -----------------
    def __float__(self) -> float:
        return float(self.numpy())

    def __int__(self) -> int:
        return int(self.numpy())

    def __complex__(self) -> complex:
        return complex(self.numpy())

    def __bool__(self) -> bool:
        """numpy's truth value: of a one-element value its element; ValueError otherwise
        (without this every value would be true)."""
        return bool(self.numpy())

    # -- eager numpy math is rejected ----------------------------------------------------------
    def _reject(self, what: str) -> NoReturn:
        raise TypeError(
            f"{what} is not supported on {self._what} outside a compiled function: put the "
            "computation in a function decorated with @dtc.compile, or gather the global "
            "value first with np.asarray(...)")

    def __array_ufunc__(self, ufunc: np.ufunc, method: str, *inputs: Any, **kwargs: Any
                        ) -> NoReturn:
        name = ufunc.__name__ if method == "__call__" else f"{ufunc.__name__}.{method}"
        self._reject(f"numpy ufunc np.{name}")

    def __array_function__(self, func: Any, types: Any, args: Any, kwargs: Any) -> NoReturn:
        self._reject(f"numpy function np.{func.__name__}")

    def __getitem__(self, index: Any) -> NoReturn:
        self._reject("indexing")


def _rejecting(method: str, symbol: str):
    def reject(self: DistributedValue, *other: Any) -> NoReturn:
        self._reject(f"the operator {symbol}")
    reject.__name__ = method
    return reject


for _name, _symbol in _OPERATORS.items():
    for _method in (f"__{_name}__", f"__r{_name}__"):
        setattr(DistributedValue, _method, _rejecting(_method, _symbol))
for _name, _symbol in _UNREFLECTED_OPERATORS.items():
    setattr(DistributedValue, f"__{_name}__", _rejecting(f"__{_name}__", _symbol))


class _Donated:
    """The storage of a DTensor given away to a compiled function (`DTensor.donated`): its
    dtype remains, any use of its data raises `DonatedError`."""

    __slots__ = ("to", "dtype")

    def __init__(self, to: str, dtype: np.dtype) -> None:
        self.to = to
        self.dtype = dtype

    def __getattr__(self, name: str) -> object:
        raise DonatedError(f"this DTensor was donated to {self.to}, which may have written "
                           "its result into its buffer; use that result instead")


class DTensor(DistributedValue):
    """A global value of `shape` and `dtype`, laid out on `layout.mesh` as `layout`.

    Made by `pack`, `copy_to_mesh`, `relayout` and compiled functions. `storage` must hold
    shards of `layout` for `shape` (checked).
    """

    __slots__ = ("_layout", "_shape", "_storage")
    _what = "a DTensor"

    def __init__(self, storage: Storage, layout: Layout, shape: tuple[int, ...]) -> None:
        shape = tuple(int(s) for s in shape)
        sharding = layout.sharding
        mesh = layout.mesh.mesh_shape()
        problems = sharding.problems(mesh, shape)
        if problems:
            raise ValueError(f"a DTensor of shape {list(shape)} cannot have layout "
                             f"{layout.short_text()}: {'; '.join(problems)}")
        if storage.sharding != sharding or storage.mesh != mesh:
            raise ValueError(f"storage laid out as {storage.sharding.text()} on "
                             f"{storage.mesh.text()} cannot hold a {layout.short_text()} value "
                             f"on {mesh.text()}")
        if storage.shape != shape:
            raise ValueError(f"storage of a {list(storage.shape)} value cannot hold a value of "
                             f"shape {list(shape)}")
        local = sharding.local_shape(shape, mesh)
        if storage.local_shape != local:
            raise ValueError(f"storage of shards of shape {list(storage.local_shape)} does not "
                             f"hold shards of shape {list(local)}")
        self._storage = storage
        self._layout = layout
        self._shape = shape

    @classmethod
    def of_program(cls, storage: Storage, layout: Layout, shape: tuple[int, ...]) -> DTensor:
        """A DTensor made by a compiled program, whose types the compiler has checked: built
        without checking them again."""
        tensor = cls.__new__(cls)
        tensor._storage = storage
        tensor._layout = layout
        tensor._shape = shape
        return tensor

    def as_dtensor(self) -> DTensor:
        """The DTensor itself (a DVariable gives its current value)."""
        return self

    def donated(self, to: str) -> None:
        """Give the storage away to the compiled function `to` (named in errors): from now
        on reading this DTensor raises `DonatedError`."""
        self._storage = _Donated(to, self._storage.dtype)  # type: ignore[assignment]

    @property
    def is_donated(self) -> bool:
        """Whether the storage was given away (`donated`)."""
        return isinstance(self._storage, _Donated)

    @property
    def donated_to(self) -> str | None:
        """The compiled function the storage was given away to (`donated`), if it was."""
        storage = self._storage
        return storage.to if isinstance(storage, _Donated) else None

    @property
    def layout(self) -> Layout:
        """How the tensor lies on its mesh."""
        return self._layout

    @property
    def shape(self) -> tuple[int, ...]:
        """The global shape."""
        return self._shape

    @property
    def dtype(self) -> np.dtype:
        """The element dtype."""
        return self._storage.dtype

    @property
    def storage(self) -> Storage:
        """The shards, in the storage type of the backend that holds them."""
        return self._storage

    def numpy(self) -> np.ndarray:
        """The global value as a new numpy array."""
        return self._storage.to_global()

    def __repr__(self) -> str:
        """As the reference prints a DTensor: this process's component of each device, by
        short device name, then the layout's text form, the shape and the dtype."""
        shape = f"shape={tuple(self._shape)}, dtype={self.dtype}"
        if self.is_donated:
            return f"DTensor(donated, {shape})"
        components = ", ".join(
            f'"{name.rsplit("/device:", 1)[-1]}": {self._storage.device_shard(i)}'
            for i, name in zip(self.mesh.local_device_ids(), self.mesh.local_devices()))
        return f'DTensor({{{components}}}, layout="{self._layout.to_string()}", {shape})'

    __str__ = __repr__
