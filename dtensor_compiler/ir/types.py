"""Tensor types of IR values: ``dtype[shape] @ sharding``.

Dtypes are short names (``f32``, ``i64``, ``bool``, ...) with a two-way map to numpy dtypes.
The low-precision floats ``bf16``, ``f8e4m3`` (float8 e4m3fn: no infinities) and ``f8e5m2``
are the `ml_dtypes` package's numpy dtypes; they exist when it is installed
(``pip install ml_dtypes``), and numpy's promotion rules for them are those ml_dtypes
registers. ml_dtypes is imported the first time one of them is asked for (its import takes
about a second), not with this module.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
from dataclasses import dataclass
from math import prod

import numpy as np

from dtensor_compiler.ir import geometry
from dtensor_compiler.ir.sharding import MeshShape, ReduceOp, Sharding

_NUMPY_NAMES: dict[str, str] = {
    "f16": "float16",
    "f32": "float32",
    "f64": "float64",
    "i8": "int8",
    "i16": "int16",
    "i32": "int32",
    "i64": "int64",
    "u8": "uint8",
    "u16": "uint16",
    "u32": "uint32",
    "u64": "uint64",
    "bool": "bool",
    "c64": "complex64",
    "c128": "complex128",
}
LOW_PRECISION_FLOATS: dict[str, str] = {
    "bf16": "bfloat16",
    "f8e4m3": "float8_e4m3fn",
    "f8e5m2": "float8_e5m2",
}
"""IR name -> the `ml_dtypes` type name."""


@functools.cache
def _low_precision() -> dict[str, np.dtype]:
    """The low-precision dtypes by IR name (empty without ml_dtypes); imports ml_dtypes."""
    if not _HAS_ML_DTYPES:
        return {}
    ml_dtypes = importlib.import_module("ml_dtypes")
    return {name: np.dtype(getattr(ml_dtypes, t)) for name, t in LOW_PRECISION_FLOATS.items()}


def _low_precision_name(dtype: np.dtype) -> str | None:
    """The IR name of one of ml_dtypes' floats, or None. Those are user-defined numpy types
    (type numbers from 256 on), so no built-in dtype needs ml_dtypes imported to be
    answered."""
    if dtype.num < _FIRST_USER_TYPE:
        return None
    return next((name for name, d in _low_precision().items() if d == dtype), None)


_FIRST_USER_TYPE = 256
"""numpy's NPY_USERDEF: the type number of the first dtype a package registers."""
_HAS_ML_DTYPES = importlib.util.find_spec("ml_dtypes") is not None
_DTYPES: dict[str, np.dtype] = {name: np.dtype(t) for name, t in _NUMPY_NAMES.items()}
"""numpy's own dtypes by IR name."""
_NAME_OF_DTYPE: dict[np.dtype, str] = {d: name for name, d in _DTYPES.items()}
"""The native-byte-order dtypes, looked up without numpy's slow `dtype.name`."""
DTYPE_NAMES: tuple[str, ...] = tuple(_DTYPES) + (
    tuple(LOW_PRECISION_FLOATS) if _HAS_ML_DTYPES else ())
"""The dtypes of this installation."""


def dtype_name(dtype: np.dtype | type | str) -> str:
    """The IR name of a numpy dtype (``np.float32`` -> ``"f32"``). Raises TypeError if
    unknown."""
    if isinstance(dtype, str) and dtype in _DTYPES:
        return dtype
    np_dtype = np.dtype(dtype)
    name = _NAME_OF_DTYPE.get(np_dtype)
    if name is None:
        name = _NAME_OF_DTYPE.get(np_dtype.newbyteorder("="))
    if name is None:
        name = _low_precision_name(np_dtype)
    if name is None:
        raise TypeError(f"dtype {np_dtype.name} is not supported by dtensor_compiler")
    return name


def numpy_dtype(name: str) -> np.dtype:
    """The numpy dtype of an IR dtype name; TypeError for an unknown one (naming the package
    a low-precision float needs)."""
    dtype = _DTYPES.get(name)
    if dtype is None and name in LOW_PRECISION_FLOATS:
        dtype = _low_precision().get(name)
    if dtype is None:
        raise TypeError(unknown_dtype_message(name))
    return dtype


def unknown_dtype_message(name: str) -> str:
    if name in LOW_PRECISION_FLOATS:
        return f"dtype {name!r} needs the ml_dtypes package: pip install ml_dtypes"
    return f"unknown dtype {name!r}; known: {', '.join(DTYPE_NAMES)}"


def native_array(value: object) -> np.ndarray:
    """`value` as a numpy array in the machine's byte order (a ``>f4`` array is converted:
    the IR's dtypes are native)."""
    array = np.asarray(value)
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    return array


def is_floating(dtype: np.dtype) -> bool:
    """Whether `dtype` is a real floating-point type (ml_dtypes' floats included)."""
    return dtype.kind == "f" or is_low_precision(dtype)


def is_low_precision(dtype: np.dtype) -> bool:
    """Whether `dtype` is one of ml_dtypes' floats (numpy has no einsum loop for them)."""
    return _low_precision_name(dtype) is not None


def float_extremes(dtype: np.dtype) -> tuple[float, float]:
    """The lowest and highest values of a float dtype: -inf and inf where it has them, else
    its finite extremes (float8 e4m3fn has no infinities)."""
    if is_low_precision(dtype):
        info = importlib.import_module("ml_dtypes").finfo(dtype)
        if not np.isinf(np.array(np.inf).astype(dtype)):
            return float(info.min), float(info.max)
    return -np.inf, np.inf


@dataclass(frozen=True)
class TensorType:
    """A tensor type: dtype, shape and, once layouts are propagated, a sharding.

    In global IR `shape` is the exact global shape. In localized IR it is the per-device
    shape, and a dim whose blocks have padding (see `geometry`) also records the global
    extent it was cut from in `extents`: ``f32[3/10,6] @ {x, -}`` is a block of room 3 of a
    dim of 10 over 4 devices, who hold 3, 3, 3 and 1 valid rows. `extents` is None when no
    dim has padding (every even type), so even programs pay nothing for it.

    `pad` says what the padding holds: None for garbage (anything, NaN included), or a
    reduction whose identity fills every padded element (``pad(sum)``: zeros, ``pad(max)``:
    the dtype's lowest value), as a ``mask`` op leaves it. It is printed only where set.
    """

    dtype: str
    shape: tuple[int, ...]
    sharding: Sharding | None = None
    extents: tuple[int | None, ...] | None = None
    """Localized types only: per dim, the global extent when the dim has padding, else None."""
    pad: ReduceOp | None = None

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return prod(self.shape)

    @property
    def itemsize(self) -> int:
        return numpy_dtype(self.dtype).itemsize

    @property
    def nbytes(self) -> int:
        return self.size * self.itemsize

    def with_sharding(self, sharding: Sharding | None) -> TensorType:
        """This global type in another layout (what its padding holds is not kept)."""
        return TensorType(self.dtype, self.shape, sharding)

    def with_shape(self, shape: tuple[int, ...]) -> TensorType:
        return TensorType(self.dtype, shape, self.sharding)

    def with_pad(self, pad: ReduceOp | None) -> TensorType:
        return TensorType(self.dtype, self.shape, self.sharding, self.extents, pad)

    def local_shape(self, mesh: MeshShape) -> tuple[int, ...]:
        """The per-device (padded) shape of this global type."""
        if self.sharding is None:
            return self.shape
        return self.sharding.local_shape(self.shape, mesh)

    def local_nbytes(self, mesh: MeshShape) -> int:
        return prod(self.local_shape(mesh)) * self.itemsize

    def localized(self, mesh: MeshShape) -> TensorType:
        """The per-device type of this global type (which has a sharding)."""
        assert self.sharding is not None
        dims = self.sharding.dims
        uneven = geometry.uneven_dims(self.shape, dims, mesh)
        extents = tuple(n if i in uneven else None for i, n in enumerate(self.shape)
                        ) if uneven else None
        return TensorType(self.dtype, geometry.local_shape(self.shape, dims, mesh),
                          self.sharding, extents, self.pad if uneven else None)

    def global_shape(self, mesh: MeshShape) -> tuple[int, ...]:
        """The global shape of this localized type."""
        if self.sharding is None:
            return self.shape
        extents = self.extents or (None,) * self.rank
        return tuple(e if e is not None else n * self.sharding.num_shards(i, mesh)
                     for i, (n, e) in enumerate(zip(self.shape, extents)))

    @property
    def padded(self) -> bool:
        """Whether some dim of this localized type has padding."""
        return self.extents is not None

    def text(self) -> str:
        if self.extents is None:
            dims = ",".join(map(str, self.shape))
        else:
            dims = ",".join(str(s) if e is None else f"{s}/{e}"
                            for s, e in zip(self.shape, self.extents))
        out = f"{self.dtype}[{dims}]"
        if self.sharding is not None:
            out += f" @ {self.sharding.text()}"
        if self.pad is not None:
            out += f" pad({self.pad})"
        return out

    def __str__(self) -> str:
        return self.text()
