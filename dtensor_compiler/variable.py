"""`DVariable`: a mutable distributed value whose layout is fixed when it is created.

The layout comes from a DTensor initial value, or from `layout` for any other initial value
(which is copied onto the mesh). Giving neither, or a DTensor together with a different layout,
is a `LayoutError`. `assign` replaces the value and never the layout: a DTensor must already
have the variable's layout, and a numpy value is laid out as it. A DVariable reads as its
current DTensor wherever the API accepts one (`relayout`, `fetch_layout`, compiled functions'
arguments); read inside a compiled function's body without being one of its arguments, it
raises TraceError (the read would happen once, at tracing, and miss later assigns).
"""

from __future__ import annotations

import numpy as np

from dtensor_compiler.api import check_layout, copy_to_mesh
from dtensor_compiler.compile import CompiledFunction
from dtensor_compiler.dtensor import DistributedValue, DTensor
from dtensor_compiler.errors import LayoutError, TraceError
from dtensor_compiler.layout import Layout
from dtensor_compiler.tracing import tracing_now
from dtensor_compiler.tracing.location import user_location


class DVariable(DistributedValue):
    """`DVariable(initial_value, layout=None, dtype=None, name=None)`.

    `save_as_bf16` (default False) makes checkpoints store a float32 variable as bfloat16.
    """

    __slots__ = ("_value", "name", "save_as_bf16")
    _what = "a DVariable"

    def __init__(self, initial_value: object, layout: Layout | None = None,
                 dtype: np.dtype | type | str | None = None, name: str | None = None) -> None:
        if isinstance(initial_value, DistributedValue):
            value = initial_value.as_dtensor()
            if layout is not None and layout != value.layout:
                raise LayoutError(f"Conflicting layout are provided: the initial value "
                                  f"has {value.layout.short_text()}, layout= is "
                                  f"{layout.short_text()}")
            if dtype is not None and np.dtype(dtype) != value.dtype:
                raise TypeError(f"the initial value has dtype {value.dtype}, dtype= is "
                                f"{np.dtype(dtype)}")
        elif layout is None:
            raise LayoutError("Neither layout nor DTensor initial value are provided. Pass "
                              "layout= or a DTensor initial value.")
        else:
            value = copy_to_mesh(np.asarray(initial_value, dtype=dtype), layout)
        self._value: DTensor = value
        self.name = name
        self.save_as_bf16 = False

    def as_dtensor(self) -> DTensor:
        """The current value as a DTensor."""
        return self._value

    def read_value(self) -> DTensor:
        """The current value as a DTensor (TraceError inside a compiled function's body: see
        `__array__`)."""
        self._refuse_capture("read_value()")
        return self._value

    def numpy(self) -> np.ndarray:
        """The current value as a new numpy array (TraceError inside a compiled function's
        body: see `__array__`)."""
        self._refuse_capture("numpy()")
        return self._value.numpy()

    def __array__(self, dtype: np.dtype | None = None, copy: bool | None = None) -> np.ndarray:
        """The gathered value; TraceError while a compiled function is traced (a variable the
        function closes over would be read once, when it is traced, and later `assign`s
        missed: pass it as an argument, which reads its value at every call)."""
        self._refuse_capture("its value, as an array")
        return self._value.__array__(dtype, copy)

    def _refuse_capture(self, what: str) -> None:
        if tracing_now():
            name = f" {self.name!r}" if self.name else ""
            raise TraceError(f"a compiled function reads the DVariable{name} ({what}) "
                             "without taking it as an argument: the value would be fixed when "
                             "the function is traced and miss later assigns; pass the variable "
                             "as an argument", user_location())

    def assign(self, value: object) -> DVariable:
        """Replace the value, keeping shape, dtype and layout; returns the variable."""
        if isinstance(value, DistributedValue):
            check_layout(value, self.layout)
        elif not isinstance(value, np.ndarray):
            value = np.asarray(value, dtype=self.dtype)
        if value.shape != self.shape or value.dtype != self.dtype:
            raise ValueError(f"cannot assign a {value.dtype}{list(value.shape)} value to a "
                             f"{self.dtype}{list(self.shape)} variable")
        self._value = (value.as_dtensor() if isinstance(value, DistributedValue)
                       else copy_to_mesh(value, self.layout))
        return self

    def assign_add(self, delta: object) -> DVariable:
        """Add `delta` (an array or a DTensor of the variable's layout) to the value, on the
        mesh; returns the variable."""
        return self.assign(_elementwise("add", self._value, delta))

    def assign_sub(self, delta: object) -> DVariable:
        """Subtract `delta` from the value, on the mesh; returns the variable."""
        return self.assign(_elementwise("subtract", self._value, delta))

    def __repr__(self) -> str:
        return f"DVariable(name={self.name!r}, value={self._value!r})"


_UPDATES: dict[tuple[str, Layout], CompiledFunction] = {}
"""The compiled ``value op delta`` programs, by op and layout."""


def _elementwise(name: str, value: DTensor, delta: object) -> DTensor:
    """`value` `name` `delta`, compiled in `value`'s layout (the variable's checks apply to
    the result when it is assigned)."""
    if isinstance(delta, DistributedValue):
        check_layout(delta, value.layout)
    key = (name, value.layout)
    program = _UPDATES.get(key)
    if program is None:
        ufunc = getattr(np, name)
        program = _UPDATES[key] = CompiledFunction(
            lambda a, b: ufunc(a, b).astype(a.dtype), in_layouts=(value.layout, value.layout),
            out_layouts=value.layout)
    result = program(value, delta if isinstance(delta, DistributedValue)
                     else np.broadcast_to(np.asarray(delta, dtype=value.dtype), value.shape))
    assert isinstance(result, DTensor)
    return result
