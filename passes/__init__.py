"""Compiler passes, one per module; importing this package registers them all.

Default pipeline (`DEFAULT_PIPELINE`): simplify → propagate-layouts → expand-checkpoints →
insert-collectives → narrow-early → mask-padding → localize. `fuse` (elementwise chains into
kernels) runs after localize where a backend generates kernels (`FUSED_PIPELINE`).
"""

from dtensor_compiler.passes import (  # noqa: F401  (imported to register the passes)
    expand_checkpoints,
    fuse,
    insert_collectives,
    localize,
    mask_padding,
    narrow_early,
    propagate_layouts,
    simplify,
)

DEFAULT_PIPELINE = ("simplify,propagate-layouts,expand-checkpoints,insert-collectives,"
                    "narrow-early,mask-padding,localize")
FUSED_PIPELINE = DEFAULT_PIPELINE + ",fuse"
