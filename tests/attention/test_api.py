"""The user API of `attention` is exactly what the README documents (section "The `attention` API")."""

from __future__ import annotations

import re
from pathlib import Path

import attention

README = Path(__file__).resolve().parents[2] / "README.md"


def documented_names() -> set[str]:
    """The backticked names in the first column of the README's `attention` API table."""
    section = README.read_text(encoding="utf-8").split("### The `attention` API", 1)[1].split("\n#", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return {name for row in rows for name in re.findall(r"`([A-Za-z_]+)`", row.split("|")[1])}


def test_all_is_what_the_readme_documents():
    assert documented_names() and sorted(attention.__all__) == sorted(documented_names())


def test_every_exported_name_is_importable_from_the_package():
    namespace: dict = {}
    exec("from attention import *", namespace)
    assert {name for name in namespace if not name.startswith("__")} == set(attention.__all__)
