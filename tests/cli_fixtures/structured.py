"""A compiled function returning a dict with a tuple in it, for `dtc run`."""

import numpy as np

import dtensor_compiler as dtc

mesh = dtc.create_mesh([("x", 4)])


@dtc.compile(in_layouts=(dtc.Layout(["x", dtc.UNSHARDED], mesh),),
             specs=(dtc.TensorSpec((8, 4)),))
def stats(a):
    return {"total": np.sum(a), "parts": (a * 2, [np.max(a, axis=0)])}
