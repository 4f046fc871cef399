"""One client of the multi-process tests (`test_multi_client.py`), started as a process.

``python multi_client_worker.py CASE LOCAL_DEVICES`` with the clients named in
``DTENSOR_JOBS`` / ``DTENSOR_CLIENT_ID``. Each case checks its values itself (against numpy,
or against the same program on the simulated mesh) and prints ``ok <case> <client>`` last; a
mismatch raises, so the process exits non-zero with the traceback.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import ml_dtypes
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


def _stored() -> dict[str, np.ndarray]:
    """The values the checkpoint cases save and restore."""
    rng = np.random.default_rng(7)
    return {"w": rng.standard_normal((8, 12)).astype(np.float32),
            "b": rng.standard_normal(12).astype(np.float32),
            "e": rng.standard_normal((7, 5)),
            "i": np.arange(6, dtype=np.int64) * 3,
            "p": rng.standard_normal((4, 6)).astype(np.float32),
            "h": rng.standard_normal((4, 8)).astype(np.float32)}


def _checked_io(stats: object, mesh: dtc.Mesh, what: str) -> None:
    """This client's checkpoint reads and writes were all for its own devices."""
    mine = set(mesh.local_device_ids())
    for kind in ("read", "written"):
        devices = set(getattr(stats, kind))
        assert devices <= mine, f"{what}: client {dtc.client_id()} {kind} for {devices - mine}"


def ckpt_save(mesh: dtc.Mesh) -> None:
    """On a 2 x 4 mesh of 4 clients: name-based (a partial value, an uneven one, an int
    one), sharded and DTensorCheckpoint saves, one of them asynchronous. Each client writes
    only its devices' files; the test restores them in 2 clients on another mesh."""
    from dtensor_compiler.runtime.checkpoint_data import counting
    directory = Path(os.environ["DTC_TEST_DIR"])
    v = _stored()
    specs = {"w": ["dp", "tp"], "b": [U], "e": ["tp", U], "i": ["dp"]}
    tensors = {n: dtc.copy_to_mesh(v[n], dtc.Layout(spec, mesh)) for n, spec in specs.items()}
    zeros = np.zeros_like(v["p"])
    tensors["p"] = dtc.pack([v["p"] if where["tp"] == 0 else zeros
                             for where in mesh.local_device_locations()],
                            dtc.Layout([U, U], mesh, partial={"tp": "sum"}))
    with counting() as stats:
        dtc.name_based_save(mesh, directory / "named", tensors)
    _checked_io(stats, mesh, "name_based_save")
    assert set(stats.written) == set(mesh.local_device_ids())  # w has a block on every device
    @dtc.compile(in_layouts=dtc.Layout(["dp", "tp"], mesh))
    def step(x: np.ndarray) -> np.ndarray:
        dtc.save(str(directory / "traced"), {"w3": x * 3})  # a save inside the program
        return x + 1

    np.testing.assert_array_equal(
        np.asarray(dtc.relayout(step(tensors["w"]), dtc.Layout([U, U], mesh))), v["w"] + 1)

    @dtc.compile(in_layouts=dtc.Layout(["dp", "tp"], mesh))
    def racing(x: np.ndarray) -> np.ndarray:
        dtc.save(str(directory / "race"), {"w": x * 3})
        return x

    for _ in range(3):  # an asynchronous save, then a program saving the same prefix
        dtc.name_based_save(mesh, directory / "race", {"w": tensors["w"]}, blocking=False)
        racing(tensors["w"])  # runs after it on every client, never beside it
        back = dtc.name_based_restore(mesh, directory / "race", {"w": tensors["w"]})["w"]
        np.testing.assert_array_equal(
            np.asarray(dtc.relayout(back, dtc.Layout([U, U], mesh))), v["w"] * 3)
    half = dtc.copy_to_mesh(v["h"][:, :4], dtc.Layout([U, "tp"], mesh))
    other = dtc.copy_to_mesh(v["h"][:, 4:], dtc.Layout(["dp", U], mesh))
    dtc.sharded_save(mesh, directory / "sharded", ["h", "h"], ["4 8 0,4:0,4", "4 8 0,4:4,4"],
                     [half, other])
    model = dtc.DTensorCheckpoint(mesh, w=dtc.DVariable(tensors["w"]),
                                  b=dtc.DVariable(tensors["b"]))
    dtc.enable_save_as_bf16([model.w])  # type: ignore[list-item]
    handle = model.save(directory / "model", blocking=False)
    assert not isinstance(handle, str)
    assert handle.result(timeout=60) == str(directory / "model-1")
    assert dtc.latest_checkpoint(directory) == str(directory / "model-1")
    if dtc.client_id() == 0:
        with open(directory / "named.index.json") as f:
            index = json.load(f)
        assert sorted(index["tensors"]) == ["b", "e", "i", "p", "w"]
        assert index["tensors"]["w"]["layout"] == "{dp, tp}"
        assert len(index["tensors"]["w"]["slices"]) == 8
        assert len(index["tensors"]["b"]["slices"]) == 1


def ckpt_restore(mesh: dtc.Mesh) -> None:
    """On a 2 x 3 mesh of 2 clients: restore what 4 clients saved on 2 x 4, in other
    layouts (uneven ones too); each client reads only its devices' blocks."""
    from dtensor_compiler.runtime.checkpoint_data import counting
    directory = Path(os.environ["DTC_TEST_DIR"])
    v = _stored()
    a, b = mesh.dim_names
    specs = {"w": [b, a], "b": [b], "e": [a, b], "i": [b], "p": [U, a]}
    templates = {n: dtc.copy_to_mesh(np.zeros_like(v[n]), dtc.Layout(spec, mesh))
                 for n, spec in specs.items()}
    with counting() as stats:
        out = dtc.name_based_restore(mesh, directory / "named", templates)
    _checked_io(stats, mesh, "name_based_restore")
    for name, value in out.items():
        assert value.layout == templates[name].layout
        whole = dtc.relayout(value, dtc.Layout.replicated(mesh, value.ndim))
        np.testing.assert_array_equal(np.asarray(whole), v[name], err_msg=name)
    w3 = dtc.name_based_restore(mesh, directory / "traced", {"w3": templates["w"]})["w3"]
    np.testing.assert_array_equal(
        np.asarray(dtc.relayout(w3, dtc.Layout.replicated(mesh, 2))), v["w"] * 3)
    h = dtc.copy_to_mesh(np.zeros((4, 8), np.float32), dtc.Layout([a, b], mesh))
    got = dtc.name_based_restore(mesh, directory / "sharded", {"h": h})["h"]
    np.testing.assert_array_equal(
        np.asarray(dtc.relayout(got, dtc.Layout.replicated(mesh, 2))), v["h"])
    model = dtc.DTensorCheckpoint(
        mesh, w=dtc.DVariable(dtc.copy_to_mesh(np.zeros((8, 12), np.float32),
                                               dtc.Layout([U, b], mesh))),
        b=dtc.DVariable(dtc.copy_to_mesh(np.zeros(12, np.float32), dtc.Layout([U], mesh))))
    latest = dtc.latest_checkpoint(directory)
    assert latest == str(directory / "model-1"), latest
    model.restore(latest).assert_consumed()
    w = dtc.relayout(model.w.read_value(),  # type: ignore[attr-defined]
                     dtc.Layout.replicated(mesh, 2))
    bf16 = v["w"].astype(ml_dtypes.bfloat16).astype(np.float32)  # saved as bfloat16
    np.testing.assert_array_equal(np.asarray(w), bf16)
    np.testing.assert_array_equal(np.asarray(model.b), v["b"])  # type: ignore[call-overload]
    assert int(model.save_counter.numpy()) == 1


def ckpt_failure(mesh: dtc.Mesh) -> None:
    """A write that fails on client 1 fails the save on both clients, and the checkpoint
    saved before stays whole; a client saving elsewhere than client 0 (no shared directory)
    is named; a save tried again after a failure commits."""
    directory = Path(os.environ["DTC_TEST_DIR"])
    layout = dtc.Layout(["x"], mesh)
    first = dtc.copy_to_mesh(np.arange(8.0), layout)
    dtc.name_based_save(mesh, directory / "ck", {"v": first})
    blocker = directory / "ck.1.data-00001.safetensors"
    if dtc.client_id() == 1:
        blocker.mkdir()  # client 1 cannot write its data file
    dtc.barrier(mesh, "blocked")
    second = dtc.copy_to_mesh(np.arange(8.0) * 2, layout)
    try:
        dtc.name_based_save(mesh, directory / "ck", {"v": second})
    except dtc.CheckpointError as e:
        assert dtc.client_id() == 0, e
        assert "the save of" in str(e) and "failed on client 1 (IsADirectoryError" in str(e), e
        assert "it was not committed" in str(e), e
    except IsADirectoryError:
        assert dtc.client_id() == 1
    else:
        raise AssertionError("the save did not fail")
    restored = dtc.name_based_restore(mesh, directory / "ck", {"v": first})["v"]
    np.testing.assert_array_equal(np.asarray(dtc.relayout(restored, dtc.Layout([U], mesh))),
                                  np.arange(8.0))
    dtc.barrier(mesh, "checked")
    if dtc.client_id() == 1:
        blocker.rmdir()
    dtc.barrier(mesh, "unblocked")
    dtc.name_based_save(mesh, directory / "ck", {"v": second})  # the same generation again
    restored = dtc.name_based_restore(mesh, directory / "ck", {"v": first})["v"]
    np.testing.assert_array_equal(np.asarray(dtc.relayout(restored, dtc.Layout([U], mesh))),
                                  np.arange(8.0) * 2)
    # a data file that is corrupt where client 1 reads: every client's restore fails
    sharded = dtc.copy_to_mesh(np.arange(8.0), layout)
    dtc.name_based_save(mesh, directory / "bad", {"v": sharded})
    dtc.barrier(mesh, "saved")
    if dtc.client_id() == 1:
        data = directory / "bad.0.data-00001.safetensors"
        raw = bytearray(data.read_bytes())
        raw[-1] ^= 0xFF  # the last byte of device 1's block
        data.write_bytes(bytes(raw))
    dtc.barrier(mesh, "corrupted")
    for target in (layout, dtc.Layout([U], mesh)):  # client 0 reads only its block; all
        try:
            dtc.name_based_restore(mesh, directory / "bad", {"v": dtc.copy_to_mesh(
                np.zeros(8), target)})
        except dtc.CheckpointError as e:
            text = str(e)
            assert "is corrupt (checksum mismatch" in text, text
            if dtc.client_id() == 0 and target == layout:
                assert text.startswith(f"the restore of {directory / 'bad'} failed on client 1 "
                                       "(CheckpointError: ") and \
                    text.endswith("; nothing was restored"), text
        else:
            raise AssertionError("the restore of a corrupt checkpoint did not fail")
    elsewhere = directory / f"client-{dtc.client_id()}"
    elsewhere.mkdir()
    os.chdir(elsewhere)  # a relative prefix now names another directory on each client
    try:
        dtc.name_based_save(mesh, "apart", {"v": second})
    except dtc.CheckpointError as e:
        text = str(e)
        assert "which another process wrote, is not there: the processes must save into a " \
               "directory they share" in text, text
    else:
        raise AssertionError("the save without a shared directory did not fail")
    assert not (elsewhere / "apart.index.json").exists()


def fails(mesh: dtc.Mesh) -> None:
    """Client 1's all_reduce fails (it raises, as a broken link would); client 0 is in the
    same all_reduce meanwhile and must fail too instead of waiting."""
    import torch.distributed as dist
    if dtc.client_id() == 1:
        def broken(*args: object, **kwargs: object) -> None:
            raise RuntimeError("injected: the link to client 0 broke")
        dist.all_reduce = broken  # type: ignore[assignment]
    layout = dtc.Layout(["x"], mesh)
    total = dtc.compile(lambda v: v.sum(), in_layouts=layout)
    total(dtc.copy_to_mesh(np.arange(8.0), layout))


def outlived(mesh: dtc.Mesh) -> None:
    """Client 1 shuts down while client 0 goes on to a program: client 0 must name it."""
    layout = dtc.Layout(["x"], mesh)
    x = dtc.copy_to_mesh(np.arange(8.0), layout)
    if dtc.client_id() == 1:
        dtc.shutdown_accelerator_system()
        print("ok outlived 1", flush=True)
        sys.exit(0)
    twice = dtc.compile(lambda v: v * 2, in_layouts=layout)
    try:
        twice(x)  # its plan check waits for client 1
    except dtc.MultiClientError as e:
        assert "client 1 of 2 shut down before getting here" in str(e), e
        print("ok outlived 0", flush=True)
        os._exit(0)  # no barrier to meet: client 1 is gone
    raise AssertionError("a program ran without client 1")


CASES = {"collectives": collectives, "mlp": mlp, "edges": edges, "idle": idle,
         "mismatch": mismatch, "ckpt_save": ckpt_save, "ckpt_restore": ckpt_restore,
         "ckpt_failure": ckpt_failure, "fails": fails,
         "outlived": outlived}


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
