"""`dtc run FILE.py:FUNC`: run on the simulated mesh with random inputs, compare with numpy.

Inputs are drawn from a seeded generator (normal floats, small integers, random booleans) in
the shapes of the function's input specs or ``--shapes``. Every output of the compiled program
must match the plain numpy function: ``max |actual - numpy| <= atol + rtol * max |numpy|``.
The bound scales with the whole output, not element by element, because the simulated mesh
sums partial results in another order than numpy and an element near zero may carry the
rounding error of its large neighbours. Otherwise the exit status is 1.
"""

from __future__ import annotations

import argparse

import numpy as np

from dtensor_compiler.cli import target
from dtensor_compiler.cli.usage import EXIT_FAILED, EXIT_OK
from dtensor_compiler.tracing.outputs import OutputTree, flatten


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("run", parents=[common], help="run on the simulated mesh, check numpy",
                       description="Run a compiled function on the simulated mesh with random "
                                   "inputs and compare every output with plain numpy.")
    target.add_target_arguments(p)
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--rtol", type=float, default=1e-5,
                   help="tolerance relative to the largest output magnitude (default 1e-5)")
    p.add_argument("--atol", type=float, default=1e-6, help="absolute tolerance (default 1e-6)")
    p.set_defaults(handler=run)


def random_array(rng: np.random.Generator, shape: tuple[int, ...], dtype: np.dtype
                 ) -> np.ndarray:
    if dtype.kind == "b":
        return rng.random(shape) < 0.5
    if dtype.kind in "iu":
        return rng.integers(0 if dtype.kind == "u" else -8, 8, shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def _leaves(result: object) -> tuple[list[np.ndarray], OutputTree]:
    """The arrays of a result (nested tuples, lists and dicts of them), in order."""
    leaves, tree = flatten(result)
    return [np.asarray(r) for r in leaves], tree


def _compare(i: int, actual: np.ndarray, expected: np.ndarray, rtol: float, atol: float
             ) -> bool:
    if actual.shape != expected.shape:
        print(f"output {i}: shape {list(actual.shape)}, numpy gives {list(expected.shape)}: "
              "MISMATCH")
        return False
    a, e = actual.astype(np.float64), expected.astype(np.float64)
    both_nan = np.isnan(a) & np.isnan(e)
    worst = float(np.where(both_nan, 0.0, np.abs(a - e)).max(initial=0.0))
    ok = worst <= atol + rtol * float(np.abs(np.where(both_nan, 0.0, e)).max(initial=0.0))
    print(f"output {i}: {actual.dtype}{list(actual.shape)}, max abs error {worst:.3g}: "
          f"{'ok' if ok else 'MISMATCH'}")
    return ok


def run(args: argparse.Namespace) -> int:
    fn = target.load_function(args.target)
    specs = target.input_specs(fn, args.shapes, args.target)
    rng = np.random.default_rng(args.seed)
    inputs = [random_array(rng, s.shape, s.dtype) for s in specs]
    expected, numpy_tree = _leaves(fn.__wrapped__(*inputs))
    actual, tree = _leaves(fn(*inputs))
    if not tree.matches(numpy_tree) or len(actual) != len(expected):
        print(f"MISMATCH: the outputs come as {tree.text()}, numpy gives {numpy_tree.text()}")
        return EXIT_FAILED
    ok = all([_compare(i, a, e, args.rtol, args.atol)
              for i, (a, e) in enumerate(zip(actual, expected))])
    if not ok:
        print(f"FAILED: the simulated mesh differs from numpy (seed {args.seed})")
        return EXIT_FAILED
    print(f"ok: every output matches numpy (seed {args.seed})")
    return EXIT_OK
