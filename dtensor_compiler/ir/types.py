"""Tensor types of IR values: ``dtype[shape] @ sharding``.

Dtypes are short names (``f32``, ``i64``, ``bool``, ...) with a two-way map to numpy dtypes.
The low-precision floats ``bf16``, ``f8e4m3`` (float8 e4m3fn: no infinities) and ``f8e5m2``
are the `ml_dtypes` package's numpy dtypes; they exist when it is installed
(``pip install ml_dtypes``), and numpy's promotion rules for them are those ml_dtypes
registers.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from math import prod

import numpy as np

from dtensor_compiler.ir.sharding import MeshShape, Sharding

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


def _low_precision() -> dict[str, np.dtype]:
    try:
        ml_dtypes = importlib.import_module("ml_dtypes")
    except ImportError:
        return {}
    return {name: np.dtype(getattr(ml_dtypes, t)) for name, t in LOW_PRECISION_FLOATS.items()}


_LOW_PRECISION_DTYPES: dict[str, np.dtype] = _low_precision()
_DTYPES: dict[str, np.dtype] = {
    **{name: np.dtype(t) for name, t in _NUMPY_NAMES.items()}, **_LOW_PRECISION_DTYPES}
_NAME_OF_DTYPE: dict[np.dtype, str] = {d: name for name, d in _DTYPES.items()}
"""The native-byte-order dtypes, looked up without numpy's slow `dtype.name`."""
DTYPE_NAMES: tuple[str, ...] = tuple(_DTYPES)
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
        raise TypeError(f"dtype {np_dtype.name} is not supported by dtensor_compiler")
    return name


def numpy_dtype(name: str) -> np.dtype:
    """The numpy dtype of an IR dtype name; TypeError for an unknown one (naming the package
    a low-precision float needs)."""
    dtype = _DTYPES.get(name)
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
    return dtype.kind == "f" or dtype in _LOW_PRECISION_SET


def is_low_precision(dtype: np.dtype) -> bool:
    """Whether `dtype` is one of ml_dtypes' floats (numpy has no einsum loop for them)."""
    return dtype in _LOW_PRECISION_SET


_LOW_PRECISION_SET = frozenset(_LOW_PRECISION_DTYPES.values())


def float_extremes(dtype: np.dtype) -> tuple[float, float]:
    """The lowest and highest values of a float dtype: -inf and inf where it has them, else
    its finite extremes (float8 e4m3fn has no infinities)."""
    if dtype in _LOW_PRECISION_SET:
        info = importlib.import_module("ml_dtypes").finfo(dtype)
        if not np.isinf(np.array(np.inf).astype(dtype)):
            return float(info.min), float(info.max)
    return -np.inf, np.inf


@dataclass(frozen=True)
class TensorType:
    """A global tensor type; `sharding` is None until layouts are propagated."""

    dtype: str
    shape: tuple[int, ...]
    sharding: Sharding | None = None

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
        return TensorType(self.dtype, self.shape, sharding)

    def with_shape(self, shape: tuple[int, ...]) -> TensorType:
        return TensorType(self.dtype, shape, self.sharding)

    def local_shape(self, mesh: MeshShape) -> tuple[int, ...]:
        if self.sharding is None:
            return self.shape
        return self.sharding.local_shape(self.shape, mesh)

    def local_nbytes(self, mesh: MeshShape) -> int:
        return prod(self.local_shape(mesh)) * self.itemsize

    def text(self) -> str:
        out = f"{self.dtype}[{','.join(str(s) for s in self.shape)}]"
        if self.sharding is not None:
            out += f" @ {self.sharding.text()}"
        return out

    def __str__(self) -> str:
        return self.text()
