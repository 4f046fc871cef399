"""`python -m dtensor_compiler.cli` is `dtc`."""

from dtensor_compiler.cli import main

raise SystemExit(main())
