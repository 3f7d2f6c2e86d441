"""What a command does before any work: `--help` answers without loading torch (parse first, import after),
options are never abbreviated (`--scale 2` is not `--scales 2`), each command describes itself in whole
sentences, and `pladis-example NAME` runs the examples."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.cli import entry_points

ROOT = Path(__file__).resolve().parents[3]
# The commands a user meets first (README): each answers --help without importing torch. The developer tools
# (benchmark, trainers, asset builders, kernel compiler) import torch at module level and are not listed.
FAST_HELP = (
    "scripts.compare",
    "scripts.generate",
    "scripts.evaluate",
    "scripts.attention_maps",
    "scripts.toy.evaluate",
    *(f"scripts.examples.{name}" for name in entry_points.example_names()),
)
PARSING_SCRIPTS = ("compare", "generate", "evaluate", "attention_maps", "toy.evaluate", "dev.benchmark")

_PROBE = """
import contextlib, importlib, io, json, sys
report = {}
for module in sys.argv[1:]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        importlib.import_module(module).main(["--help"])
    heavy = sorted(name for name in ("torch", "diffusers", "transformers") if name in sys.modules)
    report[module] = {"help": out.getvalue(), "heavy": heavy}
    if heavy:
        break
with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
    from scripts.cli.entry_points import example
    sys.argv = ["pladis-example", "--help"]
    example()
report["pladis-example"] = {"heavy": sorted(n for n in ("torch", "diffusers", "transformers") if n in sys.modules)}
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def help_texts():
    """Every FAST_HELP command's `--help`, run in one fresh interpreter, with what it had imported after each."""
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, *FAST_HELP], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_help_answers_without_importing_torch_diffusers_or_transformers(help_texts):
    assert {module: report["heavy"] for module, report in help_texts.items() if report["heavy"]} == {}
    assert set(help_texts) == {*FAST_HELP, "pladis-example"}


def test_help_describes_each_command_in_whole_sentences(help_texts):
    for module in FAST_HELP:
        text = help_texts[module]["help"]
        source = (ROOT / (module.replace(".", "/") + ".py")).read_text(encoding="utf-8")
        docstring = source.split('"""')[1].strip()
        first_sentence = " ".join(docstring.split("\n\n")[0].split())
        assert first_sentence.endswith("."), module
        assert first_sentence in " ".join(text.split()), module  # not cut at a line end


def test_examples_help_names_the_command_that_runs_them(help_texts):
    for name in entry_points.example_names():
        usage = help_texts[f"scripts.examples.{name}"]["help"]
        assert usage.startswith(f"usage: python -m scripts.examples.{name} "), usage[:80]  # not "sdxl_cfg.py"


@pytest.mark.parametrize("script", PARSING_SCRIPTS)
def test_a_prefix_of_an_option_is_refused_not_guessed(script, capsys):
    """`--scale 2` (a slip for --scales or --pladis-scale) is an unknown option, never read as another."""
    import importlib

    module = importlib.import_module(f"scripts.{script}")
    slips = {"dev.benchmark": ["--case", "sdxl-attention"], "toy.evaluate": ["--scale", "2"]}
    slip = slips.get(script, ["--scale", "2"])
    folders = ["somewhere"] if script == "evaluate" else []
    with pytest.raises(SystemExit) as stop:
        module.parse_args([*folders, *slip])
    assert stop.value.code == 2
    error = capsys.readouterr().err
    assert f"unrecognized arguments: {slip[0]}" in error or f"argument {slip[0]}" in error, error[-300:]


def test_every_parser_is_made_by_the_one_constructor():
    sources = {path.relative_to(ROOT).as_posix(): path.read_text() for path in (ROOT / "scripts").rglob("*.py")}
    assert [name for name, text in sources.items() if "ArgumentParser(" in text] == ["scripts/cli/parsers.py"]
    assert "allow_abbrev=False" in sources["scripts/cli/parsers.py"]


def test_pladis_example_lists_the_examples_and_runs_one_by_name(tmp_path, capsys, monkeypatch):
    assert entry_points.example(["--help"]) == 0
    listing = capsys.readouterr().out
    for name in entry_points.example_names():
        assert re.search(rf"^  {name} +\S", listing, re.MULTILINE), name
    assert entry_points.example([]) == 2 and "usage: pladis-example NAME" in capsys.readouterr().err
    assert entry_points.example(["sdxl_nope"]) == 2 and "unknown example 'sdxl_nope'" in capsys.readouterr().err
    monkeypatch.setattr(sys, "argv", ["/venv/bin/pladis-example", "sdxl_cfg", "--help"])
    with pytest.raises(SystemExit) as stop:
        entry_points.example(["sdxl_cfg", "--help"])
    assert stop.value.code == 0 and capsys.readouterr().out.startswith("usage: pladis-example sdxl_cfg ")


def test_records_name_the_command_that_ran(monkeypatch):
    assert entry_points.invoked_command("scripts.compare") == ["python", "-m", "scripts.compare"]  # pytest's argv
    monkeypatch.setattr(sys, "argv", ["/venv/bin/pladis-compare", "--scales", "0,2"])
    assert entry_points.invoked_command("scripts.compare") == ["pladis-compare"]
    assert entry_points.invoked_command("scripts.toy.evaluate") == ["python", "-m", "scripts.toy.evaluate"]  # another's
    monkeypatch.setattr(sys, "argv", ["/venv/bin/pladis-attention-maps"])
    assert entry_points.invoked_command("scripts.attention_maps") == ["pladis-attention-maps"]
