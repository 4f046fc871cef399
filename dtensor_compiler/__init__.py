"""dtensor_compiler: numpy functions in, partitioned SPMD programs with explicit collectives out.

``import dtensor_compiler as dtc``; the public API is DESIGN §1: meshes and layouts, DTensors
and the functions that make and move them, `DVariable`, `compile`, checkpoints, and the error
classes.
"""

from dtensor_compiler import optim
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
from dtensor_compiler.autodiff import grad, stop_gradient, value_and_grad
from dtensor_compiler.checkpoint.name_based import (
    enable_save_as_bf16,
    lower_name_based_save,
    name_based_restore,
    name_based_save,
    save,
    sharded_save,
)
from dtensor_compiler.checkpoint.programs import CheckpointProgram
from dtensor_compiler.checkpoint.tracking import (
    AutoTrackable,
    DTensorCheckpoint,
    LoadStatus,
    latest_checkpoint,
)
from dtensor_compiler.checkpoint.writer import SaveHandle
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
    DonatedError,
    DTensorError,
    GradientError,
    IRParseError,
    LayoutError,
    Location,
    MeshError,
    PassError,
    PlanningError,
    ShapeError,
    SliceSpecError,
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
    "AutoTrackable",
    "CheckpointError",
    "DonatedError",
    "CheckpointProgram",
    "Collective",
    "CompiledFunction",
    "DTensor",
    "DTensorCheckpoint",
    "DTensorError",
    "DVariable",
    "IRParseError",
    "Layout",
    "LayoutError",
    "LoadStatus",
    "Location",
    "Lowered",
    "Mesh",
    "MeshError",
    "PassError",
    "PlanningError",
    "SaveHandle",
    "ShapeError",
    "SliceSpecError",
    "TensorSpec",
    "TraceError",
    "GradientError",
    "grad",
    "value_and_grad",
    "stop_gradient",
    "optim",
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
    "enable_save_as_bf16",
    "fetch_layout",
    "get_default_mesh",
    "is_dtensor",
    "latest_checkpoint",
    "lower_name_based_save",
    "name_based_restore",
    "name_based_save",
    "pack",
    "relayout",
    "relayout_like",
    "run_on",
    "save",
    "sharded_save",
    "unpack",
]
