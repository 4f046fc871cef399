"""The IR: layouts, types, op definitions, printer, parser and verifier.

Importing the package registers every op definition (`ir.ops`).
"""

from dtensor_compiler.ir import ops  # noqa: F401  (registers the op definitions)
