"""The IR: layouts, types, op definitions, printer, parser and verifier.

Importing the package registers every op definition (`ir.ops`) and exports the text form:
`print_module` writes a module and `parse_module` reads it back.
"""

from dtensor_compiler.ir import ops  # noqa: F401  (registers the op definitions)
from dtensor_compiler.ir.parser import parse_module
from dtensor_compiler.ir.printer import print_module

__all__ = ["parse_module", "print_module"]
