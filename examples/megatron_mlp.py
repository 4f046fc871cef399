"""The main demo: a Megatron-style MLP on a simulated dp=2 × tp=4 mesh.

Compiles ``tanh(x @ w1) @ w2`` with x batch-sharded, w1 column-parallel and w2 row-parallel,
prints the final IR and the table of collectives, runs it on the simulated mesh and checks the
result against plain numpy.
"""

from __future__ import annotations

import numpy as np

import dtensor_compiler as dtc

U = dtc.UNSHARDED
mesh = dtc.create_mesh([("dp", 2), ("tp", 4)])


@dtc.compile(in_layouts=(dtc.Layout(["dp", U], mesh), dtc.Layout([U, "tp"], mesh),
                         dtc.Layout(["tp", U], mesh)),
             out_layouts=dtc.Layout(["dp", U], mesh),
             specs=(dtc.TensorSpec((512, 256)), dtc.TensorSpec((256, 1024)),
                    dtc.TensorSpec((1024, 256))))
def mlp(x, w1, w2):
    return np.tanh(x @ w1) @ w2


def main() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((512, 256), dtype=np.float32)
    w1 = rng.standard_normal((256, 1024), dtype=np.float32) * 0.05
    w2 = rng.standard_normal((1024, 256), dtype=np.float32) * 0.05

    low = mlp.lower(x, w1, w2)
    print("// final IR (per-device shapes)")
    print(low.ir("final"))
    print(low.explain())

    y = mlp(x, w1, w2)
    np.testing.assert_allclose(np.asarray(y), mlp.__wrapped__(x, w1, w2), rtol=1e-4, atol=1e-4)
    print(f"result {y.shape} {y.dtype} @ {y.layout.short_text()} matches numpy")


if __name__ == "__main__":
    main()
