"""Runtimes for localized programs.

`stacked` defines how a distributed value is held on the simulated mesh (one numpy array with
leading mesh axes), `collectives` moves data between devices in that form, `kernels_numpy`
holds the per-op numpy kernels, and `simulated` runs a localized module with them.
"""
