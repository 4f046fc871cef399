"""Compiler passes, one per module; importing this package registers them all.

Default pipeline (`DEFAULT_PIPELINE`): simplify → propagate-layouts → insert-collectives →
localize.
"""

from dtensor_compiler.passes import (  # noqa: F401  (imported to register the passes)
    insert_collectives,
    localize,
    propagate_layouts,
    simplify,
)

DEFAULT_PIPELINE = "simplify,propagate-layouts,insert-collectives,localize"
