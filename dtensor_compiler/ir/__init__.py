"""The IR: layouts, types, ops, printer, parser and verifier."""
