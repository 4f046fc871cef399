"""A Megatron-style MLP block for the CLI tests, on a dp=2 x tp=4 mesh: x batch-sharded, w1
column-parallel, w2 row-parallel, so the program needs exactly one collective: an all_reduce
over tp of the second matmul's pending sum, before the residual add.

`mlp` gives no input specs (the tests pass --shapes); `not_compiled` is a plain function.
"""

import numpy as np

import dtensor_compiler as dtc

U = dtc.UNSHARDED
mesh = dtc.create_mesh([("dp", 2), ("tp", 4)])


@dtc.compile(in_layouts=(dtc.Layout(["dp", U], mesh), dtc.Layout([U, "tp"], mesh),
                         dtc.Layout(["tp", U], mesh)),
             out_layouts=dtc.Layout(["dp", U], mesh))
def mlp(x, w1, w2):
    h = np.tanh(x @ w1) @ w2
    return x + h  # the all_reduce is needed here


def not_compiled(x):
    return x
