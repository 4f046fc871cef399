"""Hypothesis settings for the differential tests: random exploration on a developer's
machine, a fixed derandomized sequence under CI (``CI`` set) so a CI run is reproducible.
A failure found locally prints its program (`Program.text`) and seed; keep it as an
``@example`` in the test."""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
