"""A user file that fails while it is loaded."""

raise RuntimeError("this file is broken on purpose")
