"""One client of the multi-process tests (`test_multi_client.py`), started as a process.

``python multi_client_worker.py CASE LOCAL_DEVICES`` with the clients named in
``DTENSOR_JOBS`` / ``DTENSOR_CLIENT_ID``. Each case checks its values itself (against numpy,
or against the same program on the simulated mesh) and prints ``ok <case> <client>`` last; a
mismatch raises, so the process exits non-zero with the traceback.
"""

from __future__ import annotations

import sys
import time

import numpy as np

import dtensor_compiler as dtc

U = dtc.UNSHARDED


def _mesh(shape: tuple[int, ...]) -> dtc.Mesh:
    names = ("dp", "tp", "sp")[:len(shape)] if len(shape) > 1 else ("x",)
    return dtc.create_distributed_mesh(list(zip(names, shape)))


def _simulated(mesh: dtc.Mesh) -> dtc.Mesh:
    return dtc.create_mesh(list(zip(mesh.dim_names, mesh.shape())))


def _relayouts(mesh: dtc.Mesh) -> list[tuple[list[object], list[object]]]:
    """(source specs, target specs) pairs that need every collective kind over one and
    several mesh dims."""
    names = mesh.dim_names
    pairs: list[tuple[list[object], list[object]]] = []
    for m in names:
        pairs += [([m, U], [U, U]),  # all_gather
                  ([m, U], [U, m]),  # all_to_all
                  ([U, U], [U, m])]  # local_slice
    if len(names) > 1:
        both = tuple(names[:2])
        pairs += [([both, U], [U, U]), ([both, U], [U, both]), ([U, U], [both, U]),
                  ([names[0], names[1]], [names[1], names[0]])]
    return pairs


def collectives(mesh: dtc.Mesh) -> None:
    """Every collective over one and two mesh dims, even and padded blocks, float, int and
    bool values: the whole value and this client's blocks as on the simulated mesh."""
    rng = np.random.default_rng(1)
    sim = _simulated(mesh)
    for rows, cols in ((8, 12), (7, 10)):  # even, and uneven (padded) blocks
        x = rng.standard_normal((rows, cols)).astype(np.float32)
        for src, dst in _relayouts(mesh):
            a = dtc.copy_to_mesh(x, dtc.Layout(src, mesh))
            b = dtc.relayout(a, dtc.Layout(dst, mesh))
            whole = dtc.relayout(b, dtc.Layout([U, U], mesh))
            np.testing.assert_array_equal(np.asarray(whole), x, err_msg=f"{src} -> {dst}")
            simulated = dtc.unpack(dtc.copy_to_mesh(x, dtc.Layout(dst, sim)))
            for device, block in zip(mesh.local_device_ids(), dtc.unpack(b)):
                np.testing.assert_array_equal(block, simulated[device])
            packed = dtc.pack(dtc.unpack(b), b.layout)  # this client's components
            np.testing.assert_array_equal(
                np.asarray(dtc.relayout(packed, dtc.Layout([U, U], mesh))), x)
    reductions = {"sum": np.sum, "max": np.max, "min": np.min, "prod": np.prod}
    for name, reduce in reductions.items():
        x = rng.uniform(0.5, 1.5, (8, 6)).astype(np.float64)
        for m in mesh.dim_names:
            for out in ([U], [m]):  # all_reduce, reduce_scatter
                f = dtc.compile(lambda v, reduce=reduce: reduce(v, axis=0),
                                in_layouts=dtc.Layout([m, U], mesh),
                                out_layouts=dtc.Layout(out, mesh))
                got = dtc.relayout(f(dtc.copy_to_mesh(x, dtc.Layout([m, U], mesh))),
                                   dtc.Layout([U], mesh))
                np.testing.assert_allclose(np.asarray(got), reduce(x, axis=0), rtol=1e-12,
                                           err_msg=f"{name} over {m} into {out}")
    flags = rng.uniform(size=(8, 4)) > 0.7
    counts = rng.integers(-5, 5, (8, 4))
    for m in mesh.dim_names:
        f = dtc.compile(lambda b, c: (b.any(0), c.sum(0), c.max(0)),
                        in_layouts=(dtc.Layout([m, U], mesh), dtc.Layout([m, U], mesh)),
                        out_layouts=(dtc.Layout([U], mesh),) * 3)
        anyb, total, top = f(dtc.copy_to_mesh(flags, dtc.Layout([m, U], mesh)),
                             dtc.copy_to_mesh(counts, dtc.Layout([m, U], mesh)))
        np.testing.assert_array_equal(np.asarray(anyb), flags.any(0))
        np.testing.assert_array_equal(np.asarray(total), counts.sum(0))
        np.testing.assert_array_equal(np.asarray(top), counts.max(0))


def mlp(mesh: dtc.Mesh) -> None:
    """The core's Megatron MLP, forward and a training step, against the simulated mesh."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((8, 16)).astype(np.float32)
    w1 = rng.standard_normal((16, 32)).astype(np.float32) * 0.2
    w2 = rng.standard_normal((32, 16)).astype(np.float32) * 0.2

    def forward(x, w1, w2):
        return np.tanh(x @ w1) @ w2

    def step(x, w1, w2):
        loss, (g1, g2) = dtc.value_and_grad(
            lambda a, b: np.mean(forward(x, a, b) ** 2), argnums=(0, 1))(w1, w2)
        return loss, w1 - 0.1 * g1, w2 - 0.1 * g2

    for m in (mesh, _simulated(mesh)):
        layouts = (dtc.Layout(["dp", U], m), dtc.Layout([U, "tp"], m),
                   dtc.Layout(["tp", U], m))
        args = [dtc.copy_to_mesh(v, lay) for v, lay in zip((x, w1, w2), layouts)]
        f = dtc.compile(forward, in_layouts=layouts)
        s = dtc.compile(step, in_layouts=layouts,
                        out_layouts=(dtc.Layout([], m), layouts[1], layouts[2]))
        rep = [dtc.Layout([U] * v.ndim, m) for v in (x, w1, w2)]
        sharded = f(*args)
        if m is mesh:  # sharded over dp, which other clients hold: no silent gather
            try:
                np.asarray(sharded)
                raise AssertionError("np.asarray gathered a value other clients hold")
            except dtc.NotLocalError as e:
                assert "spread over other clients along mesh dims ['dp']" in str(e)
                assert "dtc.relayout(x, dtc.Layout.replicated" in str(e)
        y = np.asarray(dtc.relayout(sharded, rep[0]))
        outs = s(*args)
        values = [y] + [np.asarray(dtc.relayout(o, dtc.Layout([U] * o.ndim, m)))
                        for o in outs]
        if m is mesh:
            mine = values
            kinds = [c.kind for c in s.lower(*args).collectives()]
        else:
            for a, b in zip(mine, values):
                np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(mine[0], forward(x, w1, w2), rtol=2e-5, atol=1e-5)
    assert kinds.count("all_reduce") >= 3, kinds


def edges(mesh: dtc.Mesh) -> None:
    """What gloo does not do as numpy does: max/min with NaNs held by any client, dtypes
    gloo has no collectives of, products of complex values; a client whose first program
    comes long after the others' (its plan check waits, as the heartbeat says it lives);
    and (in `main`) client 0 shutting down while the others still work."""
    rng = np.random.default_rng(3)
    m = mesh.dim_names[0]
    lay, rep = dtc.Layout([m, U], mesh), dtc.Layout([U, U], mesh)
    x = rng.standard_normal((8, 3))
    x[5, 0] = x[6, 1] = np.nan  # on the last client's rows
    for reduce in (np.max, np.min):
        for out in ([U], [m]):
            f = dtc.compile(lambda v, reduce=reduce: reduce(v, axis=0), in_layouts=lay,
                            out_layouts=dtc.Layout(out, mesh))
            got = dtc.relayout(f(dtc.copy_to_mesh(x, lay)), dtc.Layout([U], mesh))
            np.testing.assert_array_equal(np.asarray(got), reduce(x, axis=0))
    for dtype in (np.int16, np.uint16, np.uint32, np.uint64, np.complex64, np.float16):
        v = (rng.integers(1, 4, (8, 3)) + (1j if dtype is np.complex64 else 0)).astype(dtype)
        moved = dtc.relayout(dtc.copy_to_mesh(v, lay), rep)
        np.testing.assert_array_equal(np.asarray(moved), v)
        kinds = (np.sum, np.prod) if dtype is np.complex64 else (np.sum, np.max, np.prod)
        for reduce in kinds:
            f = dtc.compile(lambda a, reduce=reduce: reduce(a, axis=0), in_layouts=lay,
                            out_layouts=dtc.Layout([U], mesh))
            np.testing.assert_array_equal(np.asarray(f(dtc.copy_to_mesh(v, lay))),
                                          reduce(v, axis=0), err_msg=f"{dtype} {reduce}")
    if dtc.client_id() == 1:
        time.sleep(5)  # longer than DTC_JOIN_TIMEOUT: busy, not dead
    late = dtc.compile(lambda a: a * 3, in_layouts=lay)
    np.testing.assert_array_equal(np.asarray(dtc.relayout(late(dtc.copy_to_mesh(x, lay)),
                                                          rep)), x * 3)


def idle(mesh: dtc.Mesh) -> None:
    """Join, say so, and wait (the test kills or stops a client meanwhile)."""
    print("ready", flush=True)
    time.sleep(120)


def mismatch(mesh: dtc.Mesh) -> None:
    """Client 1 runs another program than the others: every client must refuse."""
    layout = dtc.Layout(["x"], mesh)
    x = dtc.copy_to_mesh(np.arange(8.0), layout)
    f = dtc.compile((lambda v: v.sum()) if dtc.client_id() != 1 else (lambda v: v.max()),
                    in_layouts=layout)
    f(x)


CASES = {"collectives": collectives, "mlp": mlp, "edges": edges, "idle": idle,
         "mismatch": mismatch}


def main() -> None:
    case, local, shape = sys.argv[1], int(sys.argv[2]), tuple(map(int, sys.argv[3].split("x")))
    dtc.initialize_multi_client(num_logical_cpu_devices=local)
    mesh = _mesh(shape)
    CASES[case](mesh)
    dtc.barrier(mesh, "done", timeout_in_ms=60_000)
    if case == "edges" and dtc.client_id() != 0:
        time.sleep(3)  # client 0 shuts down first: the others must still end cleanly
    print(f"ok {case} {dtc.client_id()}", flush=True)
    dtc.shutdown_accelerator_system()


if __name__ == "__main__":
    main()
