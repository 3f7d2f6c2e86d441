"""Developer tools, run as `python -m scripts.dev.<name>` (no console commands): the benchmark, the kernel
compiler's report, the processor overhead and dispatch counts, the tiny-asset builder, context-parallel costs."""
