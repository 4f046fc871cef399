"""Running localized programs.

`executor` is the seam every backend plugs into (kernels, their context, the dispatch loop);
`backends` finds a backend by name. The numpy backend simulates the whole mesh in this
process: `stacked` is how it holds a distributed value (one numpy array with leading mesh
axes), `stacked_comm` moves data between devices in that form, `stacked_context` is what its
kernels see, `kernels_numpy` holds one kernel per op, and `simulated` puts them together.
"""
