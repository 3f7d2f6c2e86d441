"""The diffusers wiring: which modules of which model family get PLADIS (the family registry), the processors and
the attention calls bound to the kernels, install/restore per call, the per-call context and step window, the
composition with diffusers' guiders and caches, and context parallelism. Imports `kernels` and `settings`, never
`perturbation` or `diagnostics`."""
