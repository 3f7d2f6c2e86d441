"""The reference formulation stays independent of the kernels it checks: `attention/kernels/reference.py` imports
only torch, the `entmax` package and the standard library, none of the fast paths."""

from __future__ import annotations

import ast
from pathlib import Path

REFERENCE = Path(__file__).resolve().parents[3] / "attention" / "kernels" / "reference.py"


def test_reference_imports_none_of_the_fast_paths():
    tree = ast.parse(REFERENCE.read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add("." * node.level + (node.module or "").split(".")[0])
    assert imported <= {"__future__", "collections", "contextvars", "contextlib", "typing", "torch", "entmax"}, imported
