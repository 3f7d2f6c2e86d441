"""The main job: `scripts/compare.py` writes a labelled with/without grid from the embedded toy model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scripts import compare

ROOT = Path(__file__).resolve().parent.parent


def test_compare_writes_a_two_panel_grid_whose_panels_differ(tmp_path):
    path = compare.main(["--out", str(tmp_path / "grid.png"), "--pladis-scale", "2.5", "--steps", "3"])
    grid = np.asarray(Image.open(path).convert("RGB")).astype(np.int16)
    assert grid.shape == (24 + 256, 2 * 256, 3)  # two 32×32 toy images shown ×8, under a 24 px label strip
    left, right = grid[24:, :256], grid[24:, 256:]
    assert np.abs(left - right).max() > 0  # PLADIS changed the picture


def test_compare_runs_as_a_plain_script_from_another_folder(tmp_path):
    out = tmp_path / "cli.png"
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "compare.py"), "--out", str(out), "--steps", "1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert Image.open(out).size[0] >= 2 * 64


@pytest.mark.parametrize("argument,named", [
    (["--pladis-scale", "-1"], "pladis_scale"), (["--pladis-alpha", "3"], "pladis_alpha"), (["--steps", "0"], "--steps"),
])
def test_compare_rejects_bad_options(argument, named, capsys):
    with pytest.raises(SystemExit):
        compare.parse_args(argument)
    assert named in capsys.readouterr().err
