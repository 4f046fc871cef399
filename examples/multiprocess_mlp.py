"""The Megatron MLP of the main demo, run by several processes: each holds its own devices.

Start it with torchrun (one host, 4 processes, one device each; gloo on CPU)::

    torchrun --standalone --nproc-per-node=4 examples/multiprocess_mlp.py

or start every process yourself, on one host or several, naming them all in ``DTENSOR_JOBS``
(``host:port`` per client; the first one's address is where client 0 listens)::

    DTENSOR_JOBS=hostA:29500,hostB:29501 DTENSOR_CLIENT_ID=0 python examples/multiprocess_mlp.py
    DTENSOR_JOBS=hostA:29500,hostB:29501 DTENSOR_CLIENT_ID=1 python examples/multiprocess_mlp.py

``DTC_LOCAL_DEVICES`` (default 4 divided by the number of processes) sets the devices per
process. The mesh is always dp=2 × tp=2. Every process runs the same compiled function on
its own blocks, checks its result against numpy and, on client 0, prints the collectives.
"""

from __future__ import annotations

import os

import numpy as np

import dtensor_compiler as dtc

U = dtc.UNSHARDED


def main() -> None:
    clients = dtc.num_clients()
    local = int(os.environ.get("DTC_LOCAL_DEVICES", max(4 // clients, 1)))
    dtc.initialize_multi_client(num_logical_cpu_devices=local)
    mesh = dtc.create_distributed_mesh([("dp", 2), ("tp", 2)])
    layouts = (dtc.Layout(["dp", U], mesh), dtc.Layout([U, "tp"], mesh),
               dtc.Layout(["tp", U], mesh))

    @dtc.compile(in_layouts=layouts, out_layouts=layouts[0])
    def mlp(x, w1, w2):
        return np.tanh(x @ w1) @ w2

    rng = np.random.default_rng(0)  # the same arrays on every client
    x = rng.standard_normal((64, 32), dtype=np.float32)
    w1 = rng.standard_normal((32, 128), dtype=np.float32) * 0.1
    w2 = rng.standard_normal((128, 32), dtype=np.float32) * 0.1
    args = [dtc.copy_to_mesh(v, layout) for v, layout in zip((x, w1, w2), layouts)]

    y = mlp(*args)  # this client's blocks of the result
    whole = np.asarray(dtc.relayout(y, dtc.Layout([U, U], mesh)))  # an explicit gather
    np.testing.assert_allclose(whole, np.tanh(x @ w1) @ w2, rtol=1e-5, atol=1e-5)
    if dtc.client_id() == 0:
        print(mlp.lower(*args).explain())
    dtc.barrier(mesh, "checked")
    print(f"client {dtc.client_id()} of {dtc.num_clients()}: devices "
          f"{mesh.local_device_ids()}, result matches numpy", flush=True)
    dtc.shutdown_accelerator_system()


if __name__ == "__main__":
    main()
