"""`attention/` is grouped by job, and its imports say so (read from the sources, function-level imports included):
the kernels import no diffusers, the PLADIS core (kernels, integration, settings, validation) never imports SEG or
the diagnostics, SEG and the diagnostics stand beside each other, and the two seams are siblings over the shared
kernel code, neither built on the other."""

from __future__ import annotations

import ast
from pathlib import Path

ATTENTION = Path(__file__).resolve().parents[2] / "attention"


def imported_modules(path: Path) -> set[str]:
    """The absolute names of the modules `path` imports (relative imports resolved against its package)."""
    package = ".".join(path.relative_to(ATTENTION.parent).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(part for part in (base, node.module) if part)
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def _sources(*rooms: str) -> list[Path]:
    return [
        path
        for room in rooms
        for path in sorted((ATTENTION / room).glob("*.py") if "." not in room else [ATTENTION / room])
    ]


def test_the_kernels_import_no_diffusers():
    offending = {
        path.name: sorted(name for name in imported_modules(path) if name.split(".")[0] == "diffusers")
        for path in _sources("kernels")
    }
    assert {name: modules for name, modules in offending.items() if modules} == {}


def test_the_pladis_core_never_imports_seg_or_the_diagnostics():
    outside = ("attention.perturbation", "attention.diagnostics")
    offending = {
        str(path.relative_to(ATTENTION)): sorted(name for name in imported_modules(path) if name.startswith(outside))
        for path in _sources("kernels", "integration", "settings.py", "validation.py")
    }
    assert {name: modules for name, modules in offending.items() if modules} == {}


def test_the_two_seams_are_siblings():
    cross, joint = ATTENTION / "kernels" / "cross_attention.py", ATTENTION / "kernels" / "text_block.py"
    assert not {name for name in imported_modules(cross) if name.startswith("attention.kernels.text_block")}
    assert not {name for name in imported_modules(joint) if name.startswith("attention.kernels.cross_attention")}
    assert "attention.kernels.table" in imported_modules(cross) & imported_modules(joint)  # the one kernel choice


def test_the_diagnostics_and_seg_are_beside_each_other_not_built_on_each_other():
    """The map recorder and SEG share the latent grid through `integration.latent_grid`, not one through the other."""
    maps = {name for path in _sources("diagnostics") for name in imported_modules(path)}
    seg = {name for path in _sources("perturbation") for name in imported_modules(path)}
    assert not {name for name in maps if name.startswith("attention.perturbation")}
    assert not {name for name in seg if name.startswith("attention.diagnostics")}
    assert "attention.integration.latent_grid" in maps & seg
