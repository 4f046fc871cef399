"""The Megatron MLP on 4 gloo processes: ours against PyTorch DTensor, and the simulated mesh.

x[2048,1024] {dp,-} @ w1[1024,4096] {-,tp} → tanh → @ w2[4096,1024] {tp,-} → {dp,-} on
dp=2 × tp=2, one device per process, 4 processes on 127.0.0.1 (``OMP_NUM_THREADS=1`` each).
PyTorch DTensor runs the same model as ``nn.Linear`` layers parallelized with
``ColwiseParallel`` / ``RowwiseParallel`` over the tp sub-mesh of ``init_device_mesh``, each
dp rank feeding its half of the batch. Forward steps, timed between barriers on every
process (best of 10 after 2 warm-up steps). Bytes: ours from the plan's collectives (bytes
of each per-device result buffer); PyTorch's from the collectives `CommDebugMode` counts,
each the all_reduce of the [1024, 1024] f32 output block. Targets: no more bytes than PyTorch
DTensor, and a step at most its time. Also the same compiled function on the simulated mesh
(one process holding all 4 devices).

Run: ``python benchmarks/multiprocess_mlp.py`` (starts the 4 processes itself; table and
results/multiprocess_mlp.json).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
from report import report

import dtensor_compiler as dtc

U = dtc.UNSHARDED
B, D, H = 2048, 1024, 4096
CLIENTS = 4
ROUNDS = 10


def mlp(x, w1, w2):
    return np.tanh(x @ w1) @ w2


def arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return (rng.standard_normal((B, D), dtype=np.float32),
            rng.standard_normal((D, H), dtype=np.float32) * 0.03,
            rng.standard_normal((H, D), dtype=np.float32) * 0.03)


def layouts(mesh: dtc.Mesh) -> tuple[dtc.Layout, ...]:
    return (dtc.Layout(["dp", U], mesh), dtc.Layout([U, "tp"], mesh),
            dtc.Layout(["tp", U], mesh))


def timed(step, barrier) -> float:
    for _ in range(2):
        step()
    best = float("inf")
    for _ in range(ROUNDS):
        barrier()
        start = time.perf_counter()
        step()
        barrier()
        best = min(best, time.perf_counter() - start)
    return best


def ours() -> dict[str, object]:
    dtc.initialize_multi_client(num_logical_cpu_devices=1)
    mesh = dtc.create_distributed_mesh([("dp", 2), ("tp", 2)])
    lay = layouts(mesh)
    f = dtc.compile(mlp, in_layouts=lay, out_layouts=lay[0])
    args = [dtc.copy_to_mesh(a, layout) for a, layout in zip(arrays(), lay)]
    x, w1, w2 = arrays()
    ref = mlp(x, w1, w2)
    got = np.asarray(dtc.relayout(f(*args), dtc.Layout([U, U], mesh)))
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-3)
    cols = f.lower(*args).collectives()
    seconds = timed(lambda: f(*args), lambda: dtc.barrier(mesh))
    dtc.shutdown_accelerator_system()
    return {"seconds": seconds, "collectives": [c.kind for c in cols],
            "bytes": sum(c.bytes for c in cols)}


def pytorch() -> dict[str, object]:
    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.debug import CommDebugMode
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        RowwiseParallel,
        parallelize_module,
    )

    torch.set_num_threads(1)
    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
    x, w1, w2 = arrays()
    model = nn.Sequential(nn.Linear(D, H, bias=False), nn.Tanh(), nn.Linear(H, D, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.from_numpy(w1.T.copy()))
        model[2].weight.copy_(torch.from_numpy(w2.T.copy()))
    parallelize_module(model, mesh["tp"], {"0": ColwiseParallel(), "2": RowwiseParallel()})
    dp = mesh["dp"].get_local_rank()
    local = torch.from_numpy(x[dp * B // 2:(dp + 1) * B // 2].copy())

    def step() -> torch.Tensor:
        with torch.no_grad():
            return model(local)

    out = step()
    np.testing.assert_allclose(out.numpy(), mlp(x, w1, w2)[dp * B // 2:(dp + 1) * B // 2],
                               rtol=1e-3, atol=1e-3)
    with CommDebugMode() as comm:
        step()
    counts = {str(k).split(".")[-1]: v for k, v in comm.get_comm_counts().items()}
    seconds = timed(step, dist.barrier)
    dist.destroy_process_group()
    block = (B // 2) * D * 4  # the all_reduce's [1024, 1024] f32 block
    return {"seconds": seconds, "collectives": counts,
            "bytes": block * sum(counts.values())}


def worker(which: str) -> None:
    result = ours() if which == "ours" else pytorch()
    if int(os.environ.get("RANK", os.environ.get("DTENSOR_CLIENT_ID", "0"))) == 0:
        print("RESULT " + json.dumps(result), flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_processes(which: str) -> dict[str, object]:
    port = _free_port()
    procs = []
    for rank in range(CLIENTS):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "RANK": str(rank),
               "WORLD_SIZE": str(CLIENTS), "LOCAL_RANK": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen([sys.executable, __file__, which], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for p, text in zip(procs, outputs):
        if p.returncode != 0:
            raise RuntimeError(f"{which} worker failed:\n{text[-3000:]}")
    line = next(x for x in outputs[0].splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def simulated() -> float:
    mesh = dtc.create_mesh([("dp", 2), ("tp", 2)])
    lay = layouts(mesh)
    f = dtc.compile(mlp, in_layouts=lay, out_layouts=lay[0])
    args = [dtc.copy_to_mesh(a, layout) for a, layout in zip(arrays(), lay)]
    return timed(lambda: f(*args), lambda: None)


def main() -> None:
    mine, theirs = run_processes("ours"), run_processes("pytorch")
    rows = [["dtensor-compiler, 4 gloo processes", round(float(mine["seconds"]), 4),
             str(mine["collectives"]), mine["bytes"]],
            ["PyTorch DTensor (Colwise/RowwiseParallel), 4 gloo processes",
             round(float(theirs["seconds"]), 4), str(theirs["collectives"]), theirs["bytes"]],
            ["dtensor-compiler, simulated mesh (1 process)", round(simulated(), 4), "-", "-"]]
    report("multiprocess_mlp", ["case", "step_s", "collectives", "bytes_per_device"], rows,
           {"model": f"x[{B},{D}] @ w1[{D},{H}] -> tanh -> @ w2[{H},{D}], dp=2 tp=2",
            "targets": "bytes <= PyTorch DTensor's; step time <= PyTorch DTensor's",
            "timing": f"forward steps between barriers, best of {ROUNDS} after 2 warm-up"})


if __name__ == "__main__":
    if len(sys.argv) > 1:
        worker(sys.argv[1])
    else:
        main()
