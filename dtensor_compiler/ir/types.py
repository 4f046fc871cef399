"""Tensor types of IR values: ``dtype[shape] @ sharding``.

Dtypes are short names (``f32``, ``i64``, ``bool``, ...) with a two-way map to numpy dtypes.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

import numpy as np

from dtensor_compiler.ir.sharding import MeshShape, Sharding

_NUMPY_OF: dict[str, str] = {
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
_NAME_OF: dict[str, str] = {v: k for k, v in _NUMPY_OF.items()}
_NAME_OF_DTYPE: dict[np.dtype, str] = {np.dtype(v): k for k, v in _NUMPY_OF.items()}
"""The native-byte-order dtypes, looked up without numpy's slow `dtype.name`."""
DTYPE_NAMES: tuple[str, ...] = tuple(_NUMPY_OF)


def dtype_name(dtype: np.dtype | type | str) -> str:
    """The IR name of a numpy dtype (``np.float32`` → ``"f32"``). Raises TypeError if unknown."""
    if isinstance(dtype, str) and dtype in _NUMPY_OF:
        return dtype
    np_dtype = np.dtype(dtype)
    name = _NAME_OF_DTYPE.get(np_dtype)
    if name is not None:
        return name
    key = np_dtype.name
    if key not in _NAME_OF:
        raise TypeError(f"dtype {key} is not supported by dtensor_compiler")
    return _NAME_OF[key]


def numpy_dtype(name: str) -> np.dtype:
    return np.dtype(_NUMPY_OF[name])


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
