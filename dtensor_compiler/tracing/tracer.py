"""`TracedArray`: what a traced function receives in place of a numpy array.

It holds an IR value (global shape and dtype, no data) and the recorder of its trace. numpy
calls on it come back through the array protocols (``__array_ufunc__``,
``__array_function__``) and are recorded as ops; Python operators and ndarray methods are
spelled as the numpy calls they stand for, so they share numpy's semantics and the one dispatch
table in `numpy_api`. Anything that needs concrete data (``bool(x)``, ``float(x)``,
``np.asarray(x)``, iteration) raises `TraceError`: control flow cannot depend on traced values.
"""

from __future__ import annotations

from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterator
from typing import Any, NoReturn, TypeVar, overload

import numpy as np
from numpy.typing import DTypeLike

from dtensor_compiler.errors import ShapeError, TraceError, UnsupportedOperationError
from dtensor_compiler.ir.core import Value
from dtensor_compiler.ir.types import numpy_dtype
from dtensor_compiler.tracing.indexing import getitem
from dtensor_compiler.tracing.location import user_location
from dtensor_compiler.tracing.numpy_api import call_function, call_ufunc
from dtensor_compiler.tracing.recorder import Recorder

_K = TypeVar("_K")


@overload
def unwrap(obj: tuple[object, ...], rec: Recorder) -> tuple[object, ...]: ...


@overload
def unwrap(obj: dict[_K, object], rec: Recorder) -> dict[_K, object]: ...


@overload
def unwrap(obj: object, rec: Recorder) -> object: ...


def unwrap(obj: object, rec: Recorder) -> object:
    """`obj` with every traced array (also inside lists, tuples, dicts) replaced by its value
    (a subclass of list or tuple other than a named tuple comes back as a plain one, a dict
    subclass other than ``OrderedDict`` and ``defaultdict`` as a plain dict)."""
    if isinstance(obj, TracedArray):
        if obj.recorder is not rec:
            raise TraceError("an operation mixes traced arrays of two different traces",
                             user_location())
        return obj.value
    if isinstance(obj, (list, tuple)):
        items = [unwrap(x, rec) for x in obj]
        if hasattr(obj, "_fields"):
            return type(obj)(*items)  # a named tuple
        return list(items) if isinstance(obj, list) else tuple(items)  # (subclasses: plain)
    if isinstance(obj, dict):
        entries = {k: unwrap(v, rec) for k, v in obj.items()}
        if isinstance(obj, OrderedDict):
            return OrderedDict(entries)
        if isinstance(obj, defaultdict):
            return defaultdict(obj.default_factory, entries)
        return entries
    return obj


def wrap(obj: object, rec: Recorder) -> object:
    """`obj` with every IR value (also inside lists and tuples) made a traced array."""
    if isinstance(obj, Value):
        return TracedArray(obj, rec)
    if isinstance(obj, (list, tuple)):
        return type(obj)(wrap(x, rec) for x in obj)
    return obj


def _data_dependent(what: str) -> NoReturn:
    raise TraceError(f"{what} needs the traced array's data, which does not exist while "
                     "tracing: control flow and Python values cannot depend on traced arrays "
                     "(use np.where for data-dependent selection)", user_location())


def _c_order_only(method: str, order: str) -> None:
    """A traced array has no memory layout to follow: only C order is one it can give."""
    if order != "C":
        raise UnsupportedOperationError(f"ndarray.{method} with order={order!r} is not "
                                        "supported (only 'C')", user_location())


def _forward(ufunc: np.ufunc) -> Callable:
    def apply(self: TracedArray, other: object) -> object:
        return ufunc(self, other)

    return apply


def _reflected(ufunc: np.ufunc) -> Callable:
    def apply(self: TracedArray, other: object) -> object:
        return ufunc(other, self)

    return apply


def _unary(ufunc: np.ufunc) -> Callable:
    def apply(self: TracedArray) -> object:
        return ufunc(self)

    return apply


def _in_place(symbol: str) -> Callable:
    def refuse(self: TracedArray, other: object) -> NoReturn:
        raise TraceError(f"traced arrays are immutable: {symbol} would write into the array "
                         f"(and its views) in numpy; write x = x {symbol[:-1]} y instead",
                         user_location())

    return refuse


class TracedArray:
    """An array inside a traced function: an IR value and the recorder of its trace."""

    __slots__ = ("value", "recorder")

    def __init__(self, value: Value, recorder: Recorder) -> None:
        self.value = value
        self.recorder = recorder

    # -- properties ------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return self.value.type.shape

    @property
    def dtype(self) -> np.dtype:
        return numpy_dtype(self.value.type.dtype)

    @property
    def ndim(self) -> int:
        return self.value.type.rank

    @property
    def size(self) -> int:
        return self.value.type.size

    @property
    def T(self) -> object:
        return np.transpose(self)

    @property
    def mT(self) -> object:
        if self.ndim < 2:
            raise ShapeError("matrix transpose with ndim < 2 is undefined", user_location())
        return np.swapaxes(self, -1, -2)

    @property
    def real(self) -> object:
        return np.real(self)

    @property
    def imag(self) -> object:
        return np.imag(self)

    def __getattr__(self, name: str) -> NoReturn:
        # only for names the class does not have; numpy's protocol probes (dunders) and
        # names ndarray lacks stay AttributeErrors
        if not name.startswith("__") and hasattr(np.ndarray, name):
            raise UnsupportedOperationError(f"ndarray.{name} is not supported on traced arrays",
                                            user_location())
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __repr__(self) -> str:
        return f"TracedArray({self.value.type.text()})"

    # -- numpy protocols -------------------------------------------------------------------------
    def __array_ufunc__(self, ufunc: np.ufunc, method: str, *inputs: object,
                        **kwargs: object) -> object:
        rec = self.recorder
        return wrap(call_ufunc(ufunc, method, rec, unwrap(inputs, rec), unwrap(kwargs, rec)),
                    rec)

    def __array_function__(self, func: Callable, types: object, args: tuple,
                           kwargs: dict) -> object:
        rec = self.recorder
        return wrap(call_function(func, rec, unwrap(args, rec), unwrap(kwargs, rec)), rec)

    def __array__(self, dtype: object = None, copy: object = None) -> NoReturn:
        _data_dependent("converting a traced array to a numpy array")

    # -- operators -------------------------------------------------------------------------------
    __add__, __radd__ = _forward(np.add), _reflected(np.add)
    __sub__, __rsub__ = _forward(np.subtract), _reflected(np.subtract)
    __mul__, __rmul__ = _forward(np.multiply), _reflected(np.multiply)
    __truediv__, __rtruediv__ = _forward(np.divide), _reflected(np.divide)
    __floordiv__, __rfloordiv__ = _forward(np.floor_divide), _reflected(np.floor_divide)
    __mod__, __rmod__ = _forward(np.remainder), _reflected(np.remainder)
    __rpow__ = _reflected(np.power)
    __divmod__, __rdivmod__ = _forward(np.divmod), _reflected(np.divmod)

    def __pow__(self, other: object, modulo: object = None) -> object:
        if modulo is not None:
            raise UnsupportedOperationError("pow with a modulus is not supported on traced "
                                            "arrays", user_location())
        return np.power(self, other)  # type: ignore[call-overload]

    __matmul__, __rmatmul__ = _forward(np.matmul), _reflected(np.matmul)
    __and__, __rand__ = _forward(np.bitwise_and), _reflected(np.bitwise_and)
    __or__, __ror__ = _forward(np.bitwise_or), _reflected(np.bitwise_or)
    __xor__, __rxor__ = _forward(np.bitwise_xor), _reflected(np.bitwise_xor)
    __lshift__, __rlshift__ = _forward(np.left_shift), _reflected(np.left_shift)
    __rshift__, __rrshift__ = _forward(np.right_shift), _reflected(np.right_shift)
    __eq__ = _forward(np.equal)
    __ne__ = _forward(np.not_equal)
    __lt__ = _forward(np.less)
    __le__ = _forward(np.less_equal)
    __gt__ = _forward(np.greater)
    __ge__ = _forward(np.greater_equal)
    __neg__ = _unary(np.negative)
    __pos__ = _unary(np.positive)
    __abs__ = _unary(np.absolute)
    __invert__ = _unary(np.invert)
    __hash__ = None  # type: ignore[assignment]  # like ndarray: == is elementwise

    # in numpy ``x += 1`` writes into x (and every view of it); a traced array cannot be
    # written, and Python's fallback ``x = x + 1`` would silently not update the views
    __iadd__ = _in_place("+=")
    __isub__ = _in_place("-=")
    __imul__ = _in_place("*=")
    __itruediv__ = _in_place("/=")
    __ifloordiv__ = _in_place("//=")
    __imod__ = _in_place("%=")
    __ipow__ = _in_place("**=")
    __imatmul__ = _in_place("@=")
    __iand__ = _in_place("&=")
    __ior__ = _in_place("|=")
    __ixor__ = _in_place("^=")
    __ilshift__ = _in_place("<<=")
    __irshift__ = _in_place(">>=")

    # -- indexing --------------------------------------------------------------------------------
    def __getitem__(self, key: object) -> TracedArray:
        rec = self.recorder
        return TracedArray(getitem(rec, self.value, unwrap(key, rec)), rec)

    def __setitem__(self, key: object, item: object) -> NoReturn:
        raise TraceError("traced arrays are immutable: item assignment is not supported (build "
                         "the new array with np.where or np.concatenate)", user_location())

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of unsized object")
        return self.shape[0]

    def __iter__(self) -> Iterator[TracedArray]:
        raise TraceError("iterating over a traced array is not supported; index it (x[i]) or "
                         "use np.split", user_location())

    # -- conversions that need data ----------------------------------------------------------
    def __bool__(self) -> NoReturn:
        _data_dependent("the truth value of a traced array")

    def __float__(self) -> NoReturn:
        _data_dependent("float() of a traced array")

    def __int__(self) -> NoReturn:
        _data_dependent("int() of a traced array")

    def __complex__(self) -> NoReturn:
        _data_dependent("complex() of a traced array")

    def __index__(self) -> NoReturn:
        _data_dependent("using a traced array as an index or size")

    # -- ndarray methods (numpy's functions of the same name) -------------------------------
    def reshape(self, *shape: Any, **kwargs: Any) -> object:
        return np.reshape(self, shape[0] if len(shape) == 1 else shape, **kwargs)

    def transpose(self, *axes: Any) -> object:
        if not axes:
            return np.transpose(self)
        return np.transpose(self, axes[0] if len(axes) == 1 else axes)

    def swapaxes(self, axis1: int, axis2: int) -> object:
        return np.swapaxes(self, axis1, axis2)

    def squeeze(self, *args: Any, **kwargs: Any) -> object:
        return np.squeeze(self, *args, **kwargs)

    def flatten(self, order: str = "C") -> object:
        _c_order_only("flatten", order)
        return np.ravel(self)

    def ravel(self, order: str = "C") -> object:
        _c_order_only("ravel", order)
        return np.ravel(self)

    def astype(self, dtype: DTypeLike | None, order: str = "K", casting: str = "unsafe",
               subok: bool = True, copy: bool = True) -> object:
        """`order`, `subok` and `copy` change no value of an immutable traced array."""
        if casting != "unsafe":
            raise UnsupportedOperationError(f"ndarray.astype with casting={casting!r} is not "
                                            "supported", user_location())
        # numpy's stubs take only an ndarray; np.astype dispatches to __array_function__
        return np.astype(self, dtype)  # type: ignore[call-overload]

    def copy(self, order: str = "C") -> TracedArray:
        """Itself: a traced array is immutable, and `order` changes no value."""
        return self

    def __copy__(self) -> TracedArray:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> TracedArray:
        return self

    def sum(self, *args: Any, **kwargs: Any) -> object:
        return np.sum(self, *args, **kwargs)

    def prod(self, *args: Any, **kwargs: Any) -> object:
        return np.prod(self, *args, **kwargs)

    def cumsum(self, *args: Any, **kwargs: Any) -> object:
        return np.cumsum(self, *args, **kwargs)

    def cumprod(self, *args: Any, **kwargs: Any) -> object:
        return np.cumprod(self, *args, **kwargs)

    def any(self, *args: Any, **kwargs: Any) -> object:
        return np.any(self, *args, **kwargs)

    def all(self, *args: Any, **kwargs: Any) -> object:
        return np.all(self, *args, **kwargs)

    def round(self, decimals: int = 0) -> object:
        return np.round(self, decimals)

    def argsort(self, *args: Any, **kwargs: Any) -> object:
        return np.argsort(self, *args, **kwargs)

    def sort(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TraceError("traced arrays are immutable: ndarray.sort sorts in place; write "
                         "x = np.sort(x) instead", user_location())

    def mean(self, *args: Any, **kwargs: Any) -> object:
        return np.mean(self, *args, **kwargs)

    def max(self, *args: Any, **kwargs: Any) -> object:
        return np.max(self, *args, **kwargs)

    def min(self, *args: Any, **kwargs: Any) -> object:
        return np.min(self, *args, **kwargs)

    def var(self, *args: Any, **kwargs: Any) -> object:
        return np.var(self, *args, **kwargs)

    def std(self, *args: Any, **kwargs: Any) -> object:
        return np.std(self, *args, **kwargs)

    def argmax(self, *args: Any, **kwargs: Any) -> object:
        return np.argmax(self, *args, **kwargs)

    def argmin(self, *args: Any, **kwargs: Any) -> object:
        return np.argmin(self, *args, **kwargs)

    def clip(self, *args: Any, **kwargs: Any) -> object:
        return np.clip(self, *args, **kwargs)

    def take(self, *args: Any, **kwargs: Any) -> object:
        return np.take(self, *args, **kwargs)

    def dot(self, other: Any, out: None = None) -> object:
        if out is not None:
            raise UnsupportedOperationError("ndarray.dot with out= is not supported: traced "
                                            "arrays are immutable", user_location())
        return np.dot(self, other)
