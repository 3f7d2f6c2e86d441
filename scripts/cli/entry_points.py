"""Console entry points for the scripts: each runs a script's `main()` and turns its result into an exit code.

The `main` functions return what they made (a grid path, the written images, a results dict) for tests and
callers; a console script would hand that to `sys.exit`, which prints it and exits with status 1, so these
wrappers return only integer exit codes (the benchmark's) and None otherwise.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable


def exit_code(result: object) -> int | None:
    """A `main()` result as `sys.exit` should see it: an int stays (an exit code), anything else is success."""
    return result if isinstance(result, int) and not isinstance(result, bool) else None


def _entry(module: str) -> Callable[[], int | None]:
    """A console-script function running `module.main()` (imported only when the command runs)."""

    def run() -> int | None:
        return exit_code(importlib.import_module(module).main())

    run.__doc__ = f"Run `python -m {module}` as a console script."
    run.module = module
    return run


compare = _entry("scripts.compare")
demo = _entry("scripts.demo")
generate = _entry("scripts.generate")
evaluate = _entry("scripts.evaluate")
attention_maps = _entry("scripts.attention_maps")
benchmark = _entry("scripts.benchmark")
train_toy = _entry("scripts.train_toy")
toy_eval = _entry("scripts.toy_eval")
toy_attention_stats = _entry("scripts.toy_attention_stats")
build_tiny_assets = _entry("scripts.build_tiny_assets")
compile_kernels = _entry("scripts.compile_kernels")
processor_overhead = _entry("scripts.processor_overhead")
