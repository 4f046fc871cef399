"""The ``shape_and_slices`` strings of `sharded_save`: which box of a larger tensor a value is.

``""`` is the whole tensor. Otherwise the string is the full shape, dims separated by blanks,
then one token with an extent per dim separated by ``:``, each ``start,length`` or ``-`` (the
whole dim): ``"4 8 0,2:-"`` is rows 0..1 of a 4x8 tensor, a 2x8 value.
"""

from __future__ import annotations

from dataclasses import dataclass

from dtensor_compiler.errors import SliceSpecError


@dataclass(frozen=True)
class SliceSpec:
    full_shape: tuple[int, ...]
    start: tuple[int, ...]
    shape: tuple[int, ...]

    @staticmethod
    def parse(text: str) -> SliceSpec | None:
        """The box `text` names; None for ``""`` (the whole tensor). SliceSpecError names what
        is wrong."""
        if not isinstance(text, str):
            raise SliceSpecError(f"a shape_and_slices entry must be a string, got "
                                 f"{type(text).__name__}")
        if text == "":
            return None
        tokens = text.split()
        if len(tokens) < 2:
            raise SliceSpecError(f"shape_and_slices {text!r}: expected the full shape and a "
                                 "slice, like '4 8 0,2:-'")
        *dims, extents = tokens
        full = []
        for d in dims:
            if not (d.isascii() and d.isdigit()):
                raise SliceSpecError(f"shape_and_slices {text!r}: dim {d!r} of the full "
                                     "shape is not a non-negative integer")
            full.append(int(d))
        parts = extents.split(":")
        if len(parts) != len(full):
            raise SliceSpecError(f"shape_and_slices {text!r}: {len(parts)} extents for a "
                                 f"rank-{len(full)} shape")
        start, shape = [], []
        for axis, (part, size) in enumerate(zip(parts, full)):
            if part == "-":
                start.append(0)
                shape.append(size)
                continue
            fields = part.split(",")
            if len(fields) != 2 or not all(f.isascii() and f.isdigit() for f in fields):
                raise SliceSpecError(f"shape_and_slices {text!r}: extent {part!r} of dim "
                                     f"{axis} is neither 'start,length' nor '-'")
            a, n = int(fields[0]), int(fields[1])
            if a + n > size:
                raise SliceSpecError(f"shape_and_slices {text!r}: extent {part!r} of dim "
                                     f"{axis} ends at {a + n}, past its size {size}")
            start.append(a)
            shape.append(n)
        return SliceSpec(tuple(full), tuple(start), tuple(shape))

    def text(self) -> str:
        extents = ":".join("-" if (a, n) == (0, s) else f"{a},{n}"
                           for a, n, s in zip(self.start, self.shape, self.full_shape))
        return " ".join(str(d) for d in self.full_shape) + " " + extents


def placement(text: str, shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(full shape, start) of a value of `shape` saved under the slice `text`; SliceSpecError
    when the slice's extent differs from `shape`."""
    spec = SliceSpec.parse(text)
    if spec is None:
        return shape, (0,) * len(shape)
    if spec.shape != shape:
        raise SliceSpecError(f"shape_and_slices {text!r} is a {list(spec.shape)} box; the "
                             f"tensor saved under it has shape {list(shape)}")
    return spec.full_shape, spec.start
