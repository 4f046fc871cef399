"""The triton backend: the simulated mesh, with every fused kernel run as a Triton kernel.

Programs are planned with the fuse pass at the end (`PIPELINE`: every elementwise op, alone
or in a chain, every sum, max or min over a last dim with the elementwise ops around it, and
every float matmul or einsum with its epilogue becomes a ``kernel`` op). Each kernel body's
source is generated (`triton_codegen`), written once to a content-hashed file under the
kernel cache directory (`cache_dir`: ``$DTC_CACHE_DIR``, default
``~/.cache/dtensor-compiler``) and imported from there: a GPU launch refuses kernels defined
by ``exec``. Launch configurations are tuned per shape class and kept beside the kernels
(`triton_tuning`). One launch covers every simulated device at once, since values are held
stacked as on the numpy backend (`stacked`): the mesh axes are dims of the kernel's index
space.

Without a GPU, kernels run in Triton's interpreter: `TRITON_INTERPRET` is set before any
generated module is imported, and the stacked numpy arrays are handed over as torch CPU
tensors that share their memory (bfloat16 as its bits). With one, each launch copies its
operands to the GPU and its result back (values do not stay on the GPU between ops yet).
Ops outside kernels that compute (gathers, scatter-adds, sorts, scans, other reductions,
integer contractions, ...) run as torch operations on the same device (`torch_kernels`);
bodies the templates do not cover run op by op on the same kernels, and an op torch does
not compute as numpy does (`torch_kernels.runner`) on the numpy kernels. Every
compute step and what ran it is listed by `kernel_runs` (`Lowered.kernel_sources`,
`Lowered.explain`). Collectives move the stacked arrays on the host (`stacked_comm`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from dtensor_compiler.ir.core import Function, Module, Operation
from dtensor_compiler.ir.ops.kernel import KERNEL
from dtensor_compiler.ir.printer import Namer
from dtensor_compiler.ir.types import numpy_dtype
from dtensor_compiler.runtime.backends import Backend, KernelRun
from dtensor_compiler.runtime.executor import ExecContext, KernelFn
from dtensor_compiler.runtime.kernels_numpy import align_local_rank
from dtensor_compiler.runtime.simulated import SimulatedExecutor
from dtensor_compiler.runtime.stacked import StackedStorage
from dtensor_compiler.runtime.torch_kernels import TORCH_KERNELS, runner
from dtensor_compiler.runtime.triton_codegen import (
    Generated,
    Unsupported,
    body_row_space,
    kernel_source,
)
from dtensor_compiler.runtime.triton_contraction import Dim, contraction_plan
from dtensor_compiler.runtime.triton_device import (
    DEVICE,
    INTERPRETED,
    host_tensor,
    synchronize,
    to_device,
)
from dtensor_compiler.runtime.triton_tuning import Config, Tuner, size_class

PIPELINE = ("simplify,propagate-layouts,expand-checkpoints,insert-collectives,narrow-early,"
            "mask-padding,localize,fuse{min-ops=1}")
TRITON_KERNELS = TORCH_KERNELS.extended("triton")


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


def load_kernel(source: str, name: str) -> tuple[Any, Tuner]:
    """The Triton kernel `name` defined by `source`, imported from its cache file, and the
    tuner of its launch configurations (kept beside it)."""
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
    tuner = Tuner(cache_dir() / "tuning" / f"{path.stem}.json")
    return getattr(module, name), tuner  # a triton JITFunction, launched as kernel[grid](...)


_LANES = 1 << 16
"""The most elements one program handles in the interpreter (whose cost is per program and
nearly independent of the block)."""


def _elementwise_configs(n: int) -> list[Config]:
    """Block sizes to try for `n` elements: in the interpreter one block for all when they
    fit, else the two largest; on a GPU a few sizes and warp counts."""
    if INTERPRETED:
        if n <= _LANES:
            return [{"BLOCK": max(16, size_class(n))}]
        return [{"BLOCK": _LANES // 4}, {"BLOCK": _LANES}]
    return [{"BLOCK": 1024, "num_warps": 4}, {"BLOCK": 2048, "num_warps": 8},
            {"BLOCK": 4096, "num_warps": 8}]


def _row_configs(rows: int, block_r: int) -> list[Config]:
    """Rows per program to try: every row in one program when they fit the interpreter's
    lanes, else two sizes; on a GPU a few sizes and warp counts."""
    if INTERPRETED:
        if rows * block_r <= _LANES:
            return [{"ROWS": size_class(rows)}]
        sizes = [max(1, _LANES // 4 // block_r), max(1, _LANES // block_r)]
        return [{"ROWS": n} for n in dict.fromkeys(sizes)]
    return [{"ROWS": max(1, 1024 // block_r), "num_warps": 4},
            {"ROWS": max(1, 4096 // block_r), "num_warps": 8}]


def _inputs(aligned: list[np.ndarray]) -> tuple[list[torch.Tensor], list[int]]:
    """The kernel's input tensors (on `DEVICE`) and their element strides, one per dim of
    the index space: a dim an input is broadcast along is read at index 0 (stride 0)."""
    inputs, strides = [], []
    for a in aligned:
        a = a[(*(slice(0, 1) if n == 1 or s == 0 else slice(None)
                 for n, s in zip(a.shape, a.strides)), ...)]  # (`...`: a 0-d stays an array)
        if INTERPRETED and not a.flags.c_contiguous:
            a = a.copy()  # the interpreter copies storages
        t = to_device(a)  # (a copy to the GPU may lay it out anew: strides after)
        strides += [0 if n == 1 else s for n, s in zip(t.shape, t.stride())]
        inputs.append(t)
    return inputs, strides


class _Output:
    """A kernel's output array and the tensor the kernel writes: the array's own memory in
    the interpreter; on a GPU, device memory copied into the array after the launch."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.array = np.empty(shape, dtype=dtype)
        host = host_tensor(self.array)
        self.tensor = host if INTERPRETED else torch.empty_like(host, device=DEVICE)

    def result(self) -> np.ndarray:
        if not INTERPRETED:
            host_tensor(self.array).copy_(self.tensor)
        return self.array


def _launcher(kernel: Any, tuner: Tuner, op: Operation, body: Function, rank: int,
              mesh_axes: int) -> KernelFn:
    """Operand arrays in, the kernel's output array out (over the operands' broadcast
    shape; the executor broadcasts it over mesh axes it is the same along)."""
    ranks = [a.type.rank for a in body.args]
    local = op.type.rank
    dtype = numpy_dtype(op.type.dtype)

    def run(*arrays: np.ndarray) -> np.ndarray:
        aligned = [align_local_rank(np.asarray(a), local, mesh_axes) for a in arrays]
        # the mesh axes any input varies along, then the result's own dims (a broadcast_to
        # in the body may make them bigger than any input's)
        shape = np.broadcast_shapes(*(a.shape[:mesh_axes] for a in aligned)) + op.type.shape
        out = _Output(shape, dtype)
        size = out.array.size
        if size == 0:
            return out.array
        inputs, strides = _inputs(aligned)
        args = (out.tensor, *inputs, size, *shape, *strides)

        def launch(config: Config) -> None:
            with np.errstate(all="ignore"):  # (masked lanes compute on anything)
                kernel[(math.ceil(size / config["BLOCK"]),)](*args, **config)

        launch(tuner.best(str(size_class(size)), _elementwise_configs(size), launch,
                          synchronize))
        return out.result()

    assert all(r <= local for r in ranks) and rank == mesh_axes + local
    return run


def _row_launcher(kernel: Any, tuner: Tuner, op: Operation, body: Function, rank: int,
                  mesh_axes: int) -> KernelFn:
    """Operand arrays in, the row kernel's output array out."""
    space = body_row_space(body)
    local = len(space)
    dtype = numpy_dtype(op.type.dtype)

    def run(*arrays: np.ndarray) -> np.ndarray:
        aligned = [align_local_rank(np.asarray(a), local, mesh_axes) for a in arrays]
        stacked = np.broadcast_shapes(*(a.shape[:mesh_axes] for a in aligned)) + space
        rows, r = math.prod(stacked[:-1]), stacked[-1]
        out = _Output(stacked[:mesh_axes] + op.type.shape, dtype)
        if out.array.size == 0:
            return out.array
        inputs, strides = _inputs(aligned)
        block_r = size_class(r)
        args = (out.tensor, *inputs, rows, r, *stacked[:-1], *strides)

        def launch(config: Config) -> None:
            with np.errstate(all="ignore"):  # (masked lanes compute on anything)
                kernel[(math.ceil(rows / config["ROWS"]),)](*args, BLOCK_R=block_r,
                                                            **config)

        launch(tuner.best(f"{size_class(rows)}x{block_r}", _row_configs(rows, block_r),
                          launch, synchronize))
        return out.result()

    assert rank == mesh_axes + local
    return run


def _contraction_configs(m: int, n: int, k: int) -> list[Config]:
    """Tile sizes to try for an ``m x k`` by ``k x n`` product: in the interpreter one tile as
    big as the product (at least 16 and at most 128 wide, as a GPU dot needs); on a GPU a
    few tile shapes, warp counts and pipeline depths."""
    if INTERPRETED:
        def wide(size: int) -> int:
            return min(128, max(16, size_class(size)))
        return [{"BM": wide(m), "BN": wide(n), "BK": wide(k), "GROUP": 8, "UPCAST": 1}]
    tiles = [(128, 128, 64, 8, 3), (128, 256, 64, 8, 3), (64, 128, 32, 4, 4), (64, 64, 32, 4, 4)]
    return [{"BM": bm, "BN": bn, "BK": bk, "GROUP": 8, "UPCAST": 0, "num_warps": warps,
             "num_stages": stages} for bm, bn, bk, warps, stages in tiles]


def _contraction_launcher(kernel: Any, tuner: Tuner, op: Operation, body: Function,
                          rank: int, mesh_axes: int) -> KernelFn:
    """Operand arrays in, the contraction group's output array out: every array is passed
    as it is, with its stride along each dim of the contraction (0 where it lacks the dim
    or is broadcast along it)."""
    plan = contraction_plan(body, mesh_axes)
    sa, sb, so = plan.subscripts
    local = op.type.rank
    dtype = numpy_dtype(op.type.dtype)
    batch, m, n, k = (plan.role(r) for r in ("batch", "m", "n", "k"))

    def along(dims: list[Dim], strides: list[int], letters: str, rank: int) -> list[int]:
        """An array's strides along `dims`, its local dims named by `letters` (right-aligned
        to `rank` result dims when `letters` is the result's)."""
        lead = rank - (len(strides) - mesh_axes)
        axes = {c: mesh_axes + j - lead for j, c in enumerate(letters) if j >= lead}
        return [strides[d.mesh_axis] if d.mesh_axis is not None else
                strides[axes[d.letter]] if d.letter in axes else 0 for d in dims]

    def run(*given: np.ndarray) -> np.ndarray:
        arrays = [np.asarray(a) for a in given]  # (a 0-d value may come as a numpy scalar)
        mesh = np.broadcast_shapes(*(a.shape[:mesh_axes] for a in arrays))
        out = _Output(mesh + op.type.shape, dtype)
        if out.array.size == 0:
            return out.array
        tensors, strides = [], []
        for a in arrays:
            (t,), s = _inputs([a])
            tensors.append(t)
            strides.append(s)
        sizes = dict(zip(sa, arrays[plan.a].shape[mesh_axes:])) | dict(
            zip(sb, arrays[plan.b].shape[mesh_axes:]))
        z = [mesh[d.mesh_axis] if d.mesh_axis is not None else sizes[str(d.letter)]
             for d in plan.dims]
        a_rank, b_rank = len(sa), len(sb)
        ints = [*z, *along(batch + m + k, strides[plan.a], sa, a_rank),
                *along(batch + k + n, strides[plan.b], sb, b_rank),
                *along(batch + m + n, list(out.tensor.stride()), so, local),
                *(s for i in plan.loaded
                  for s in along(batch + m + n, strides[i], so, local))]
        count = dict(zip((d.name for d in plan.dims), z))
        sizes_of = [math.prod(count[d.name] for d in dims) for dims in (batch, m, n, k)]
        b_count, m_size, n_size, k_size = sizes_of
        args = (out.tensor, *tensors, *ints)

        def launch(config: Config) -> None:
            grid = b_count * math.ceil(m_size / config["BM"]) * math.ceil(n_size / config["BN"])
            with np.errstate(all="ignore"):  # (masked lanes compute on anything)
                kernel[(grid,)](*args, **config)

        key = "x".join(str(size_class(s)) for s in sizes_of)
        launch(tuner.best(key, _contraction_configs(m_size, n_size, k_size), launch,
                          synchronize))
        return out.result()

    assert rank == mesh_axes + local
    return run


@TRITON_KERNELS.register_call(KERNEL)
def _kernel(op: Operation, ctx: ExecContext, body: Function) -> KernelFn | None:
    try:
        generated: Generated = kernel_source(body, ctx.mesh_axes)
    except Unsupported:
        return None  # the executor runs the body op by op
    launcher = {"rows": _row_launcher, "contraction": _contraction_launcher}.get(
        generated.template, _launcher)
    return launcher(*load_kernel(generated.source, body.name), op, body, generated.rank,
                    ctx.mesh_axes)


def kernel_runs(module: Module) -> list[KernelRun]:
    """What runs each compute step of `module`'s entry function, in program order: every
    kernel op's generated kernel (or, for a body the templates do not cover, why, and what
    runs each of its ops), and every other op that computes, with `runner`'s answer."""
    axes = len(module.mesh.dims)
    bodies = {func.name: func for func in module.functions}
    name = Namer(module.main)
    runs = []
    for op in module.main.ops:
        if op.name == KERNEL.name:
            body = bodies[str(op.attrs["body"])]
            ops = tuple(o.name for o in body.ops if o.operands)  # (not its constants)
            try:
                generated = kernel_source(body, axes)
            except Unsupported as e:
                each = ", ".join(f"{o.name} on {runner(o)}" for o in body.ops if runner(o))
                detail = f"{e} is not covered: {each}"
                runs.append(KernelRun(body.name, "op by op", ops, detail,
                                      f"# @{body.name} runs op by op: {detail}\n"))
            else:
                runs.append(KernelRun(body.name, "triton", ops, generated.template,
                                      generated.source))
            continue
        runs_on = runner(op)
        if runs_on is not None:
            result = name(op.results[0])
            where = f"on {DEVICE}" if runs_on == "torch" else "on the host"
            runs.append(KernelRun(result, runs_on, (op.name,), where,
                                  f"# {result} = {op.name} runs as a {runs_on} kernel {where}\n"))
    return runs


BACKEND = Backend(name="triton", kernels=TRITON_KERNELS, place=StackedStorage.from_global,
                  from_device_shards=StackedStorage.from_device_shards,
                  executor=lambda module, donated: SimulatedExecutor(
                      module, TRITON_KERNELS, donated=donated),
                  pipeline=PIPELINE, kernel_runs=kernel_runs)
