"""Tracing: an ordinary numpy function to an IR module (global shapes, user layouts pinned).

`trace` is the entry point (`trace_outputs` also gives the structure the function returned its
arrays in); `traced_relayout`, `traced_relayout_like`, `traced_save` and
`is_traced` serve ``dtc.relayout``, ``dtc.relayout_like`` and ``dtc.save`` inside a compiled
function.
"""

from dtensor_compiler.tracing.driver import (
    function_name,
    is_traced,
    trace,
    trace_outputs,
    traced_relayout,
    traced_relayout_like,
    traced_save,
    tracing_now,
)
from dtensor_compiler.tracing.tracer import TracedArray

__all__ = ["TracedArray", "function_name", "is_traced", "trace", "trace_outputs",
           "traced_relayout", "traced_relayout_like", "traced_save", "tracing_now"]
