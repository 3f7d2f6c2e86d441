"""Console entry points for the user tools: each runs a tool's `main()` and turns its result into an exit code.

The `main` functions return what they made (a grid path, the written images, a results dict) for tests and
callers; a console script would hand that to `sys.exit`, which prints it and exits with status 1, so these
wrappers return only integer exit codes and None otherwise. `pladis-example NAME` runs one of `scripts/examples/`.
The developer tools (`scripts/dev/`) and the toy's (`scripts/toy/`) have no console command: `python -m` runs them.
The tools are named here by module path and imported only when their command runs (the core imports none of them).
"""

from __future__ import annotations

import ast
import importlib
import sys
from collections.abc import Callable
from pathlib import Path

EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "examples"
EXAMPLE_COMMAND = "pladis-example"


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


def console_command(module: str) -> list[str] | None:
    """The console command that runs `module`: `scripts.attention_maps` → `pladis-attention-maps`,
    `scripts.examples.sdxl_cfg` → `pladis-example sdxl_cfg`; None for the developer tools and the toy's
    (`scripts.dev.*`, `scripts.toy.*`), which run as `python -m` only."""
    package, _, name = module.rpartition(".")
    if package == "scripts.examples":
        return [EXAMPLE_COMMAND, name]
    return [f"pladis-{name.replace('_', '-')}"] if package == "scripts" else None


def invoked_command(module: str) -> list[str]:
    """The words that started `module`'s command in this process: its console command when that is how the
    process started (`pladis-compare`), else `python -m <module>` (also when a test or script calls `main`)."""
    command = console_command(module)
    return command if command and Path(sys.argv[0]).name == command[0] else ["python", "-m", module]


def example_names() -> list[str]:
    """The examples `pladis-example` runs: the modules of `scripts/examples/`."""
    return sorted(path.stem for path in EXAMPLES_DIR.glob("*.py") if path.stem != "__init__")


def example_summary(name: str) -> str:
    """The first sentence of an example's docstring (read from its source: nothing is imported)."""
    text = ast.get_docstring(ast.parse((EXAMPLES_DIR / f"{name}.py").read_text(encoding="utf-8"))) or ""
    return " ".join(text.split("\n\n")[0].split())


def example_usage() -> str:
    lines = [f"usage: {EXAMPLE_COMMAND} NAME [options]   ({EXAMPLE_COMMAND} NAME --help for an example's options)", ""]
    lines += ["Runs one of the examples in scripts/examples/ and writes its grid to outputs/examples/NAME.png:", ""]
    lines += [f"  {name:<17} {example_summary(name)}" for name in example_names()]
    return "\n".join(lines)


def example(argv: list[str] | None = None) -> int | None:
    """`pladis-example NAME [options]`: run `scripts/examples/NAME.py`; without a name (or with `--help`),
    list the examples. An unknown name is a usage error (exit code 2)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(example_usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in example_names():
        print(f"{example_usage()}\n\n{EXAMPLE_COMMAND}: error: unknown example {name!r}", file=sys.stderr)
        return 2
    return exit_code(importlib.import_module(f"scripts.examples.{name}").main(rest))
