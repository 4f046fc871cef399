"""The crc32 of checkpoint data: zlib-ng's vectorised implementation when it is installed
(the ``checkpoint`` extra; about 25 GB/s on one core here), else the standard library's (the
same values, about 3.5 GB/s). Both drop the GIL, so checksums run beside the IO threads."""

from __future__ import annotations

from collections.abc import Callable

try:
    from zlib_ng.zlib_ng import crc32 as _crc32
except ImportError:  # pragma: no cover - the extra is not installed
    from zlib import crc32 as _crc32

crc32: Callable[[memoryview | bytes], int] = _crc32
"""The crc32 (zlib's polynomial, initial value 0) of a bytes-like object."""

IMPLEMENTATION = _crc32.__module__
"""Which module computes it (``zlib_ng.zlib_ng`` or ``zlib``), for benchmarks to report."""
