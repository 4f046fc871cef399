"""Where the triton backend computes, and numpy arrays as torch tensors there and back.

On a machine with a GPU, kernels and torch ops run on it (`DEVICE` ``cuda``). Without one,
Triton kernels run in Triton's interpreter and torch ops on the CPU (``cpu``):
``TRITON_INTERPRET`` is set here, before any kernel is decorated, since Triton reads it
then. This module imports triton, after those settings.

Values between ops are numpy arrays (the simulated mesh's stacked storage): `to_device`
hands one over (sharing its memory on the CPU; a copy to the GPU otherwise) and `to_host`
takes a result back (sharing the tensor's memory on the CPU). bfloat16 crosses as its bits,
since numpy knows it only through ml_dtypes.
"""

from __future__ import annotations

import os
import sys
import warnings

import numpy as np
import torch

from dtensor_compiler.errors import DTensorError

if not torch.cuda.is_available():  # read when a kernel is decorated: before any is imported
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
        raise DTensorError("triton was imported before the triton backend on a machine without "
                           "a GPU, so its own functions (tl.sum) were not made for its "
                           "interpreter: set TRITON_INTERPRET=1 in the environment, or import "
                           "triton after using the backend")
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # pinned: Triton 3.10 flips the default

import triton  # noqa: E402, F401  (after the settings above; a missing package fails here)

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
"""Whether kernels run in Triton's interpreter (no GPU)."""
DEVICE = "cpu" if INTERPRETED else "cuda"
"""Where kernels and torch ops run: the interpreter's CPU tensors, or the GPU."""

TORCH_DTYPES: dict[str, torch.dtype] = {
    "bool": torch.bool, "int8": torch.int8, "int16": torch.int16, "int32": torch.int32,
    "int64": torch.int64, "uint8": torch.uint8, "float16": torch.float16,
    "bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64,
    "complex64": torch.complex64, "complex128": torch.complex128,
}
"""The numpy dtypes (by name) torch computes on, and its own for each. Wider unsigned
integers are not here: torch stores them but implements few ops on them."""


def host_tensor(array: np.ndarray) -> torch.Tensor:
    """`array` as a CPU tensor sharing its memory (bfloat16 through its bits)."""
    if array.dtype.name == "bfloat16":
        return torch.from_numpy(array.view(np.uint16)).view(torch.bfloat16)
    with warnings.catch_warnings():  # read-only inputs are only read
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)


def to_device(array: np.ndarray) -> torch.Tensor:
    """`array` as a tensor on `DEVICE` (the same memory on the CPU; torch takes no negative
    strides, so an array with one is copied first)."""
    if any(s < 0 for s in array.strides):
        array = array.copy()
    return host_tensor(array).to(DEVICE)


def to_host(tensor: torch.Tensor, dtype: np.dtype) -> np.ndarray:
    """`tensor` as a numpy array of `dtype` (converted if it is not of it)."""
    want = TORCH_DTYPES[dtype.name]
    tensor = tensor.to(device="cpu", dtype=want)
    if want == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(dtype)
    return tensor.numpy()


def synchronize() -> None:
    """Wait for the GPU's queued work (nothing to wait for in the interpreter)."""
    if not INTERPRETED:
        torch.cuda.synchronize()
