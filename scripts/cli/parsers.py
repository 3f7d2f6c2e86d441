"""How every command-line tool makes its argument parser: the module's whole docstring as the description, and
options taken only as spelt in full.

argparse's default accepts any unambiguous prefix of an option, so a mistyped `--scale 2` would silently be read
as `--scales 2`; every parser here is built with `allow_abbrev=False` instead.
"""

from __future__ import annotations

import argparse


def command_parser(doc: str | None, prog: str | None = None) -> argparse.ArgumentParser:
    """A parser for a command documented by `doc` (its module docstring, shown whole and as written, so no
    sentence is cut at a line end), that refuses abbreviated options."""
    return argparse.ArgumentParser(
        prog=prog,
        description=(doc or "").strip() or None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
