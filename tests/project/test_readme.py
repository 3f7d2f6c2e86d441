"""The README says what its sources say: the numbers it quotes from docs/PERFORMANCE.md and from the toy's
recorded evaluation are those, its pictures are made by the commands it shows, and its offline CPU snippet
runs as written."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
PERFORMANCE = (ROOT / "docs" / "PERFORMANCE.md").read_text(encoding="utf-8")
# A ratio or share: "1.41×", "3.2–4.0×", "+2 %" (each end of a range is a number of its own).
MEASURE = re.compile(r"(\d+(?:\.\d+)?)(?:–(\d+(?:\.\d+)?))?(?:×| %)")


def section(text: str, title: str) -> str:
    """The text of a Markdown section from its heading to the next heading of any level."""
    return text.split(f"\n{title}\n", 1)[1].split("\n#", 1)[0]


def measures(text: str) -> set[str]:
    return {number for match in MEASURE.finditer(text) for number in match.groups() if number}


def newest_reference_ratio(case: str) -> str:
    """The "reference / stock" cell of `case` in docs/PERFORMANCE.md's newest measured table (the first)."""
    table = [line for line in PERFORMANCE.split("## Measured", 1)[1].splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in table[0].strip("|").split("|")]
    row = next(line for line in table if line.startswith(f"| {case}"))
    return [cell.strip() for cell in row.strip("|").split("|")][header.index("reference / stock")]


def test_the_readme_quotes_docs_performance_numbers_as_recorded():
    paragraph = section(README, "## Performance").split("```", 1)[0]
    quoted = measures(paragraph)
    recorded = measures(PERFORMANCE)  # its measured tables, their notes and its modelled costs
    assert quoted and quoted - recorded == set(), "README numbers that docs/PERFORMANCE.md does not state"
    for case in ("SDXL cross-attention", "FLUX double-stream"):  # and the newest reference ratios, not older ones
        assert f"(reference {newest_reference_ratio(case)})" in " ".join(paragraph.split()), case


def test_docs_performance_no_longer_calls_the_triton_kernel_unwritten():
    assert "not written yet" not in PERFORMANCE


def table_rows(text: str, first_cells: tuple[str, ...]) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(first_cells)]


def test_the_readme_toy_table_is_the_recorded_one():
    recorded = (ROOT / "asset" / "readme" / "toy_eval.md").read_text(encoding="utf-8")
    rows = table_rows(recorded, ("| 1 |", "| 5 |"))
    assert len(rows) == 18 and table_rows(README, ("| 1 |", "| 5 |")) == rows


@pytest.mark.parametrize("name", ["compare_sweep", "attention_maps"])
def test_the_readme_pictures_come_from_the_commands_it_shows(name):
    settings = json.loads((ROOT / "asset" / "readme" / f"{name}.json").read_text())
    command = " ".join(settings["command"])
    shown = [line.split("#")[0].strip() for line in README.splitlines()]
    assert command in shown, command
    assert f"(asset/readme/{name}.png)" in README
    assert settings["device"] == settings["arguments"]["device"] == "cpu"


@pytest.mark.slow  # generates with the toy
def test_the_offline_cpu_snippet_runs_as_written_from_the_repository_root(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README, re.DOTALL)
    snippet = next(block for block in blocks if 'from_pretrained("asset/toy-sdxl"' in block)
    (tmp_path / "asset").symlink_to(ROOT / "asset")  # the repository root, without writing into it
    monkeypatch.chdir(tmp_path)
    exec(compile(snippet, "README.md", "exec"), {})
    assert Image.open(tmp_path / "toy.png").size == (32, 32)
