"""Differential testing: random programs × random meshes × random layouts on the simulated
mesh must equal plain numpy on the global arrays (planned with the default pipeline, with
elementwise chains fused into kernels, or for the triton backend's generated kernels), every
device's block of a result must be
the numpy slice of it (sizes are often not divisible by their shards: padding must never show),
and the results, saved as a checkpoint and restored into other random layouts, must come back
bit for bit."""

from __future__ import annotations

import importlib.util
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st
from program_gen import MESH_SHAPES, Program, programs, shardings_for

import dtensor_compiler as dtc
from dtensor_compiler.passes import FUSED_PIPELINE

TRITON = importlib.util.find_spec("triton") is not None
"""Whether programs are also drawn for the triton backend (in the interpreter here)."""

MESH_NAMES = ("x", "y", "z")


@st.composite
def cases(draw):
    prog: Program = draw(programs())
    sizes = list(draw(st.sampled_from(MESH_SHAPES)))
    names = list(MESH_NAMES[: len(sizes)])
    in_layouts = [with_partial(draw, shardings_for(draw, s, names), names)
                  for s in prog.input_shapes]
    out_layouts = None
    if draw(st.booleans()):
        outs = prog(*[np.zeros(s) for s in prog.input_shapes])
        outs = outs if isinstance(outs, tuple) else (outs,)
        out_layouts = [
            with_partial(draw, shardings_for(draw, np.shape(o), names), names)
            if o.dtype.kind == "f" else (shardings_for(draw, np.shape(o), names), {})
            for o in outs]
    dtype = draw(st.sampled_from([np.float64, np.float32]))
    seed = draw(st.integers(0, 2**16))
    with np.errstate(all="ignore"):  # only the shapes of the results matter here
        outs = prog(*[np.zeros(s) for s in prog.input_shapes])
    outs = outs if isinstance(outs, tuple) else (outs,)
    restore_layouts = [(shardings_for(draw, np.shape(o), names), {}) for o in outs]
    how = draw(st.sampled_from([{}, {}, {"pipeline": FUSED_PIPELINE}, {"backend": "triton"}]
                               if TRITON else [{}, {"pipeline": FUSED_PIPELINE}]))
    return prog, names, sizes, in_layouts, out_layouts, dtype, seed, restore_layouts, how


def with_partial(draw, dims, names):
    """`dims` plus, sometimes, a pending sum over one mesh dim the dims leave free."""
    free = [n for n in names if not any(n in d for d in dims)]
    if free and draw(st.integers(0, 3)) == 0:
        return dims, {draw(st.sampled_from(free)): "sum"}
    return dims, {}


def block_slices(layout, shape, device):
    """Numpy's slice of the block `device` holds: ceil-sized blocks, the last ones short."""
    out = []
    for axis, block in enumerate(layout.offset_to_shard()[device]):
        room = -(-shape[axis] // layout.num_shards(axis))
        out.append(slice(block * room, (block + 1) * room))
    return tuple(out)


def _layout(spec, mesh):
    dims, partial = spec
    return dtc.Layout([dtc.UNSHARDED if not d else d[0] if len(d) == 1 else d for d in dims],
                      mesh, partial=partial)


@settings(max_examples=int(__import__("os").environ.get("DTC_EXAMPLES", 250)), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(cases())
def test_random_programs_match_numpy(case):
    prog, names, sizes, in_specs, out_specs, dtype, seed, restore_specs, how = case
    if how.get("backend") == "triton" and "bf16" in prog.text():
        reject()  # the interpreter rounds bf16 toward zero (a GPU, like numpy, to nearest)
    mesh = dtc.create_mesh(list(zip(names, sizes)))
    rng = np.random.default_rng(seed)
    inputs = [rng.standard_normal(s).astype(dtype) for s in prog.input_shapes]
    expected = prog(*inputs)
    expected = expected if isinstance(expected, tuple) else (expected,)
    in_layouts = tuple(_layout(spec, mesh) for spec in in_specs)
    out_layouts = None if out_specs is None else tuple(_layout(s, mesh) for s in out_specs)
    # arguments alternate between numpy arrays and DTensors already on the mesh
    args = [dtc.copy_to_mesh(a, layout) if i % 2 else a
            for i, (a, layout) in enumerate(zip(inputs, in_layouts))]
    if rng.integers(2):  # the arrays as one argument, a dict, with in_layouts nested like it
        keys = [f"x{i}" for i in range(len(args))]
        f = dtc.compile(lambda d: prog(*[d[k] for k in keys]),
                        in_layouts=(dict(zip(keys, in_layouts)),), out_layouts=out_layouts,
                        verify=True, **how)
        args = [dict(zip(keys, args))]
    else:
        f = dtc.compile(prog, in_layouts=in_layouts, out_layouts=out_layouts, verify=True,
                        **how)
    note = prog.text() + (f"\n{how}" if how else "")
    for call in ("first call", "cached call"):  # a program's first run is checked, later
        got = f(*args)                           # ones are its straight-line form
        got = got if isinstance(got, tuple) else (got,)
        assert len(got) == len(expected), note
        for g, e in zip(got, expected):
            g = np.asarray(g)
            assert g.shape == e.shape, (call, note)
            assert g.dtype == e.dtype, (call, note)
            exact = dtype == np.float64 and "float32" not in note  # no float32 rounding
            tol = 1e-9 if exact else 2e-4
            np.testing.assert_allclose(g, e, rtol=tol, atol=tol, err_msg=f"{call}\n{note}")
    for g, e in zip(got, expected):
        if not g.layout.partial:
            for device, block in enumerate(dtc.unpack(g)):
                want = e[block_slices(g.layout, e.shape, device)]
                assert block.shape == want.shape, (device, g.layout.short_text(), note)
                np.testing.assert_allclose(block, want, rtol=tol, atol=tol, err_msg=note)

    results = {f"r{i}": g for i, g in enumerate(got)}
    with tempfile.TemporaryDirectory() as directory:
        dtc.name_based_save(mesh, f"{directory}/ck", results)
        templates = {n: dtc.copy_to_mesh(np.zeros(g.shape, g.dtype), _layout(spec, mesh))
                     for (n, g), spec in zip(results.items(), restore_specs)}
        restored = dtc.name_based_restore(mesh, f"{directory}/ck", templates)
    for name, g in results.items():
        assert restored[name].layout == templates[name].layout
        assert np.asarray(restored[name]).tobytes() == np.asarray(g).tobytes(), (name, note)


@settings(max_examples=int(__import__("os").environ.get("DTC_GRAD_EXAMPLES", 120)),
          deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(cases())
def test_random_programs_have_the_right_gradients(case):
    """Gradient mode: the gradient of ``sum(outputs * weights)`` with respect to every input,
    compiled with the program's random layouts, must give the directional derivative that
    central differences of the plain numpy program give, along a random direction (one pair
    of evaluations checks every element). Programs through float32 or bfloat16 (rounding
    hides a finite difference), through np.round or integer casts (staircases: a finite
    difference across a step is huge), whose loss is not finite, whose one-sided differences
    disagree (a kink within the step), or through complex values (refused) are skipped. The
    inputs go to grad as its arguments, or packed in one dict or list of tuples."""
    prog, names, sizes, in_specs, _, _, seed, _, how = case
    note = prog.text()
    if any(word in note for word in ("float32", "bf16", "np.round", "int8")):
        reject()
    mesh = dtc.create_mesh(list(zip(names, sizes)))
    rng = np.random.default_rng(seed)
    inputs = [rng.standard_normal(s) for s in prog.input_shapes]
    outs = prog(*inputs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    weights = [rng.standard_normal(np.shape(o)) if np.asarray(o).dtype.kind == "f" else None
               for o in outs]
    if all(w is None for w in weights):
        reject()

    def loss(*xs):
        got = prog(*xs)
        got = got if isinstance(got, tuple) else (got,)
        return sum(np.sum(o * w) for o, w in zip(got, weights) if w is not None)

    argnums = tuple(range(len(inputs)))
    keys = [f"x{i}" for i in range(len(inputs))]
    # how the inputs reach grad: as its arguments, or as one nested argument whose gradient
    # comes back in that structure
    packing = ("arguments", "dict", "list of tuples")[int(rng.integers(3))]

    def gradients(*xs):
        if packing == "arguments":
            grads = dtc.grad(loss, argnums=argnums)(*xs)
            return grads if isinstance(grads, tuple) else (grads,)
        if packing == "dict":
            grads = dtc.grad(lambda d: loss(*[d[k] for k in keys]))(dict(zip(keys, xs)))
            return tuple(grads[k] for k in keys)
        grads = dtc.grad(lambda pairs: loss(*[p[0] for p in pairs]))([(x,) for x in xs])
        return tuple(p[0] for p in grads)

    f = dtc.compile(gradients, in_layouts=tuple(_layout(spec, mesh) for spec in in_specs),
                    verify=True, **how)
    try:
        grads = f(*inputs)
    except dtc.GradientError as e:
        if "complex values" in str(e):
            reject()  # derivatives through complex values are refused
        raise
    grads = grads if isinstance(grads, tuple) else (grads,)
    directions = [rng.standard_normal(np.shape(x)) for x in inputs]
    eps = 1e-6
    up = loss(*[x + eps * v for x, v in zip(inputs, directions)])
    down = loss(*[x - eps * v for x, v in zip(inputs, directions)])
    numeric = (up - down) / (2 * eps)
    if not np.isfinite(numeric):
        reject()
    here = loss(*inputs)
    if (up - here) / eps != pytest.approx((here - down) / eps, rel=1e-3, abs=1e-4):
        reject()  # a kink within eps (np.where at an input 4e-7 from 0): no finite difference
    analytic = sum(float(np.sum(np.asarray(g) * v)) for g, v in zip(grads, directions))
    if not np.isfinite(analytic) and ("std" in note or "norm" in note):
        reject()  # sqrt at 0 (the std of one element): no derivative, as in JAX
    for g, x in zip(grads, inputs):
        assert np.asarray(g).shape == x.shape, note
    assert analytic == pytest.approx(numeric, rel=1e-4, abs=1e-5), note
