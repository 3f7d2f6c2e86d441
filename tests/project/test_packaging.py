"""The package definition: pyproject.toml admits the versions requirements.txt pins, names the packages
that exist, its console commands resolve to callables, and no module edits `sys.path` to find the others."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11; the definition itself admits 3.10

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
TOOLS = {"pytest", "ruff"}  # pinned in requirements.txt for CI, dev extras in pyproject.toml


def pinned_requirements() -> dict[str, Requirement]:
    """requirements.txt's lines as requirements, by canonical name."""
    lines = (line.split("#")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines())
    return {canonicalize_name(req.name): req for req in map(Requirement, filter(None, lines))}


def declared_requirements() -> dict[str, Requirement]:
    """pyproject.toml's dependencies and optional dependencies, by canonical name."""
    project = PROJECT["project"]
    specs = list(project["dependencies"]) + [s for extra in project["optional-dependencies"].values() for s in extra]
    return {canonicalize_name(req.name): req for req in map(Requirement, specs)}


def test_every_pin_is_declared_and_admitted():
    pinned, declared = pinned_requirements(), declared_requirements()
    assert set(pinned) == set(declared), "requirements.txt and pyproject.toml name different packages"
    for name, pin in pinned.items():
        versions = [spec.version for spec in pin.specifier if spec.operator == "=="]
        for version in versions:
            assert declared[name].specifier.contains(version), f"{name}=={version} is outside {declared[name]}"


def test_runtime_dependencies_leave_tools_to_extras():
    runtime = {canonicalize_name(Requirement(s).name) for s in PROJECT["project"]["dependencies"]}
    assert not runtime & TOOLS
    assert PROJECT["project"]["requires-python"] == ">=3.10"


def test_console_commands_resolve_to_callables():
    from scripts.cli.entry_points import console_command, example_names

    scripts = PROJECT["project"]["scripts"]
    assert "pladis-compare" in scripts and scripts["pladis-example"] == "scripts.cli.entry_points:example"
    for command, target in scripts.items():
        module_name, _, attribute = target.partition(":")
        function = getattr(importlib.import_module(module_name), attribute)
        assert callable(function), command
        if command != "pladis-example":  # one script each, named after it (what records write as the command)
            assert callable(importlib.import_module(function.module).main), command
            assert console_command(function.module) == [command]
    for name in example_names():  # `pladis-example NAME`
        assert callable(importlib.import_module(f"scripts.examples.{name}").main), name
        assert console_command(f"scripts.examples.{name}") == ["pladis-example", name]


def test_only_the_user_tools_are_console_commands_and_the_developer_tools_run_as_modules(monkeypatch):
    """The console commands are the user tools at the top of scripts/ (and `pladis-example`); the developer
    tools (`scripts/dev/`) and the toy's (`scripts/toy/`) have none and run as `python -m`, which their
    records also name when another command (`pladis-evaluate --toy`) runs them."""
    import sys

    from scripts.cli import entry_points

    targets = [target.partition(":")[2] for target in PROJECT["project"]["scripts"].values()]
    modules = sorted(getattr(entry_points, name).module for name in targets if name != "example")
    tools = [path.stem for path in (ROOT / "scripts").glob("*.py") if path.stem != "__init__"]
    assert modules == sorted(f"scripts.{name}" for name in tools) and len(modules) == 5
    monkeypatch.setattr(sys, "argv", ["/venv/bin/pladis-evaluate", "--toy"])
    for room in ("dev", "toy"):
        for path in (ROOT / "scripts" / room).glob("*.py"):
            module = f"scripts.{room}.{path.stem}"
            assert entry_points.console_command(module) is None, module
            assert entry_points.invoked_command(module) == ["python", "-m", module]
            if "def main(" in path.read_text():
                assert 'if __name__ == "__main__":' in path.read_text(), module


def test_packages_found_are_the_top_level_folders():
    patterns = PROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    for pattern in patterns:
        folder = ROOT / pattern.rstrip("*")
        assert (folder / "__init__.py").is_file(), pattern


def test_no_module_edits_sys_path():
    sources = [p for folder in ("attention", "pipeline", "scripts", "tests") for p in (ROOT / folder).rglob("*.py")]
    offenders = [
        str(p.relative_to(ROOT))
        for p in sources
        if p.name != Path(__file__).name and re.search(r"sys\.path\.(insert|append)", p.read_text())
    ]
    assert offenders == []


@pytest.mark.slow  # subprocess
def test_a_console_command_runs_from_another_folder_and_records_itself(tmp_path):
    """`.ci/run` installs the project (editable) into its environment, so the README's commands exist there:
    in CI (PLADIS_CI=1) `pladis-compare` must be on PATH; elsewhere it is checked where installed."""
    import json
    import os
    import shutil
    import subprocess

    command = shutil.which("pladis-compare")
    if command is None:
        assert not os.environ.get("PLADIS_CI"), ".ci/run did not install the project: no pladis-compare on PATH"
        pytest.skip("the project is not installed here (pip install -e .)")
    out = tmp_path / "grid.png"
    result = subprocess.run(
        [command, "--scales", "0", "--steps", "1", "--out", str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    settings = json.loads(out.with_suffix(".json").read_text())
    assert settings["command"] == ["pladis-compare", "--scales", "0", "--steps", "1", "--out", str(out)]
    assert settings["rerun"] == "pladis-compare --settings <this file>"
