"""The triton backend: the simulated mesh, with every fused kernel run as a Triton kernel.

Programs are planned with the fuse pass at the end (`PIPELINE`: every elementwise op, alone
or in a chain, becomes a ``kernel`` op). Each kernel body's source is generated
(`triton_codegen`), written once to a content-hashed file under the kernel cache directory
(`cache_dir`: ``$DTC_CACHE_DIR``, default ``~/.cache/dtensor-compiler``) and imported from
there: a GPU launch refuses kernels defined by ``exec``. One launch covers every simulated
device at once, since values are held stacked as on the numpy backend (`stacked`): the mesh
axes are dims of the kernel's index space.

Without a GPU, kernels run in Triton's interpreter: `TRITON_INTERPRET` is set before any
generated module is imported, and the stacked numpy arrays are handed over as torch CPU
tensors that share their memory (bfloat16 as its bits). Ops outside kernels (reductions,
contractions, collectives, ...) and bodies the templates do not cover (`kernel_sources`
says which and why) run on the numpy backend's kernels.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import sys
import threading
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

if not torch.cuda.is_available():  # read when a kernel is decorated: before any is imported
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # pinned: Triton 3.10 flips the default

import triton  # noqa: E402, F401  (a missing package fails here, by name)

from dtensor_compiler.ir.core import Function, Module, Operation  # noqa: E402
from dtensor_compiler.ir.ops.kernel import KERNEL  # noqa: E402
from dtensor_compiler.ir.types import numpy_dtype  # noqa: E402
from dtensor_compiler.runtime.backends import Backend  # noqa: E402
from dtensor_compiler.runtime.executor import ExecContext, KernelFn  # noqa: E402
from dtensor_compiler.runtime.kernels_numpy import NUMPY_KERNELS, align_local_rank  # noqa: E402
from dtensor_compiler.runtime.simulated import SimulatedExecutor  # noqa: E402
from dtensor_compiler.runtime.stacked import StackedStorage  # noqa: E402
from dtensor_compiler.runtime.triton_codegen import Unsupported, elementwise_source  # noqa: E402

PIPELINE = ("simplify,propagate-layouts,expand-checkpoints,insert-collectives,narrow-early,"
            "mask-padding,localize,fuse{min-ops=1}")
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
"""Whether kernels run in Triton's interpreter (no GPU)."""
TRITON_KERNELS = NUMPY_KERNELS.extended("triton")


def cache_dir() -> Path:
    """Where generated kernels are kept: ``$DTC_CACHE_DIR``, else ``dtensor-compiler``
    under ``$XDG_CACHE_HOME`` (default ``~/.cache``)."""
    given = os.environ.get("DTC_CACHE_DIR")
    if given:
        return Path(given)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dtensor-compiler"


def kernel_file(source: str, name: str) -> Path:
    """The file holding `source` in the cache, written (atomically) if it is not there."""
    digest = hashlib.sha256(source.encode()).hexdigest()[:20]
    path = cache_dir() / "kernels" / f"{name}_{digest}.py"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
        temporary.write_text(source)
        os.replace(temporary, path)
    return path


_LOADED: dict[Path, ModuleType] = {}
_LOCK = threading.Lock()


def load_kernel(source: str, name: str) -> Any:
    """The Triton kernel `name` defined by `source`, imported from its cache file."""
    path = kernel_file(source, name)
    with _LOCK:
        module = _LOADED.get(path)
        if module is None:
            spec = importlib.util.spec_from_file_location(f"dtc_kernels.{path.stem}", path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
            _LOADED[path] = module
    return getattr(module, name)  # a triton JITFunction, launched as kernel[grid](...)


def _block(n: int) -> int:
    """Elements per program: a few large blocks in the interpreter, whose cost is per
    program; 1024 on a GPU."""
    if not INTERPRETED:
        return 1024
    return max(16, min(1 << 16, 1 << max(0, n - 1).bit_length()))


def _tensor(array: np.ndarray) -> torch.Tensor:
    """`array` as a torch tensor sharing its memory (bfloat16 through its bits)."""
    if array.dtype.name == "bfloat16":
        return torch.from_numpy(array.view(np.uint16)).view(torch.bfloat16)
    with warnings.catch_warnings():  # read-only inputs are only read
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)


def _launcher(kernel: Any, op: Operation, body: Function, rank: int,
              mesh_axes: int) -> KernelFn:
    """Operand arrays in, the kernel's output array out (over the operands' broadcast
    shape; the executor broadcasts it over mesh axes it is the same along)."""
    ranks = [a.type.rank for a in body.args]
    local = op.type.rank
    dtype = numpy_dtype(op.type.dtype)

    def run(*arrays: np.ndarray) -> np.ndarray:
        aligned = [align_local_rank(a, local, mesh_axes) for a in arrays]
        shape = np.broadcast_shapes(*(a.shape for a in aligned))
        out = np.empty(shape, dtype=dtype)
        if out.size == 0:
            return out
        inputs, strides = [], []
        for a in aligned:
            if any(s < 0 for s in a.strides):
                a = np.ascontiguousarray(a)
            # a dim the input is broadcast along is read at index 0 (stride 0)
            a = a[tuple(slice(0, 1) if n == 1 or s == 0 else slice(None)
                        for n, s in zip(a.shape, a.strides))]
            strides += [0 if n == 1 else s // a.itemsize for n, s in zip(a.shape, a.strides)]
            inputs.append(_tensor(a))
        block = _block(out.size)
        kernel[(math.ceil(out.size / block),)](_tensor(out), *inputs, out.size, *shape,
                                               *strides, BLOCK=block)
        return out

    assert all(r <= local for r in ranks) and rank == mesh_axes + local
    return run


@TRITON_KERNELS.register_call(KERNEL)
def _kernel(op: Operation, ctx: ExecContext, body: Function) -> KernelFn | None:
    try:
        source, rank = elementwise_source(body, ctx.mesh_axes)
    except Unsupported:
        return None  # the executor runs the body op by op
    return _launcher(load_kernel(source, body.name), op, body, rank, ctx.mesh_axes)


def kernel_sources(module: Module) -> dict[str, str]:
    """Every kernel body's generated source, by name; a body the templates do not cover
    maps to a comment saying why and that it runs op by op."""
    out = {}
    bodies = {str(op.attrs["body"]) for op in module.main.ops if op.name == KERNEL.name}
    axes = len(module.mesh.dims)
    for func in module.functions:
        if func.name in bodies:
            try:
                out[func.name] = elementwise_source(func, axes)[0]
            except Unsupported as e:
                out[func.name] = f"# @{func.name} runs op by op on numpy: {e} is not covered\n"
    return out


BACKEND = Backend(name="triton", kernels=TRITON_KERNELS, place=StackedStorage.from_global,
                  from_device_shards=StackedStorage.from_device_shards,
                  executor=lambda module, donated: SimulatedExecutor(
                      module, TRITON_KERNELS, donated=donated),
                  pipeline=PIPELINE, kernel_sources=kernel_sources)
