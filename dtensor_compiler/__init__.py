"""dtensor_compiler: numpy functions in, partitioned SPMD programs with explicit collectives out.

``import dtensor_compiler as dtc``; the public API is DESIGN §1: meshes and layouts, DTensors
and the functions that make and move them, `DVariable`, `compile`, and the error classes.
"""

from dtensor_compiler.api import (
    call_with_layout,
    check_layout,
    copy_to_mesh,
    create_distributed_mesh,
    default_mesh,
    device_name,
    fetch_layout,
    get_default_mesh,
    is_dtensor,
    pack,
    relayout,
    relayout_like,
    run_on,
    unpack,
)
from dtensor_compiler.compile import (
    Collective,
    CompiledFunction,
    Lowered,
    TensorSpec,
    compile,
)
from dtensor_compiler.dtensor import DTensor
from dtensor_compiler.errors import (
    CheckpointError,
    DTensorError,
    IRParseError,
    LayoutError,
    Location,
    MeshError,
    PassError,
    PlanningError,
    ShapeError,
    TraceError,
    UnsupportedOperationError,
    VerificationError,
)
from dtensor_compiler.layout import MATCH, UNSHARDED, Layout
from dtensor_compiler.mesh import Mesh, create_mesh
from dtensor_compiler.variable import DVariable

__all__ = [
    "MATCH",
    "UNSHARDED",
    "CheckpointError",
    "Collective",
    "CompiledFunction",
    "DTensor",
    "DTensorError",
    "DVariable",
    "IRParseError",
    "Layout",
    "LayoutError",
    "Location",
    "Lowered",
    "Mesh",
    "MeshError",
    "PassError",
    "PlanningError",
    "ShapeError",
    "TensorSpec",
    "TraceError",
    "UnsupportedOperationError",
    "VerificationError",
    "call_with_layout",
    "check_layout",
    "compile",
    "copy_to_mesh",
    "create_distributed_mesh",
    "create_mesh",
    "default_mesh",
    "device_name",
    "fetch_layout",
    "get_default_mesh",
    "is_dtensor",
    "pack",
    "relayout",
    "relayout_like",
    "run_on",
    "unpack",
]
