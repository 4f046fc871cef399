"""The op definitions, by family; importing this package registers every op.

Each family module defines its ops with `opdef.OpDef` and registers them with
`opdef.register`; the module names its ops as constants so code can refer to a definition
rather than spell its name (`reductions.REDUCE_SUM`).
"""

from dtensor_compiler.ir.ops import (  # noqa: F401  (imported to register the ops)
    checkpoint,
    collectives,
    contractions,
    elementwise,
    hints,
    indexing,
    kernel,
    padding,
    reductions,
    shape,
    sources,
)
