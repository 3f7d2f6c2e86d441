"""The main job: `python -m scripts.compare` writes a labelled with/without grid from the embedded toy model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scripts import compare

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_compare_writes_a_two_panel_grid_whose_panels_differ(tmp_path):
    path = compare.main(["--out", str(tmp_path / "grid.png"), "--pladis-scale", "2.5", "--steps", "3"])
    grid = np.asarray(Image.open(path).convert("RGB")).astype(np.int16)
    # two 32×32 toy images shown ×8, under a 24 px label strip, over the caption
    assert grid.shape[1:] == (2 * 256, 3) and grid.shape[0] > 24 + 256
    left, right = grid[24 : 24 + 256, :256], grid[24 : 24 + 256, 256:]
    assert np.abs(left - right).max() > 0  # PLADIS changed the picture


@pytest.mark.slow  # subprocess
def test_compare_runs_as_a_module_from_another_folder(tmp_path):
    out = tmp_path / "cli.png"
    result = subprocess.run(
        [sys.executable, "-m", "scripts.compare", "--out", str(out), "--steps", "1"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert Image.open(out).size[0] >= 2 * 64


def test_compare_rejects_bad_options(capsys):
    """(λ and α on the command line: tests/project/test_bad_values.py.)"""
    with pytest.raises(SystemExit):
        compare.parse_args(["--steps", "0"])
    assert "--steps" in capsys.readouterr().err


@pytest.mark.slow  # two command-line runs
def test_auto_pipeline_loads_the_stock_class_and_gives_the_pladis_pipelines_grid(tmp_path):
    same = ["--model", "asset/tiny-sdxl", "--prompt", "a photo of a red cube"]
    auto = compare.main(["--pipeline", "auto", *same, "--out", str(tmp_path / "auto.png")])  # the stock class
    sdxl = compare.main(["--pipeline", "sdxl", *same, "--out", str(tmp_path / "sdxl.png")])
    panels = [np.asarray(Image.open(path))[24 : 24 + 256] for path in (auto, sdxl)]  # captions name the guidance
    np.testing.assert_array_equal(*panels)


def test_auto_pipeline_runs_a_newer_family_from_a_saved_folder(tmp_path):
    from tests.tiny_pipelines import build_tiny_chroma

    build_tiny_chroma().save_pretrained(tmp_path / "tiny-chroma")
    path = compare.main(
        [
            "--pipeline",
            "auto",
            "--model",
            str(tmp_path / "tiny-chroma"),
            "--height",
            "32",
            "--width",
            "32",
            "--steps",
            "2",
            "--out",
            str(tmp_path / "chroma.png"),
        ]
    )
    grid = np.asarray(Image.open(path).convert("RGB")).astype(np.int16)
    half = grid.shape[1] // 2
    assert np.abs(grid[24:, :half] - grid[24:, half:]).max() > 0  # PLADIS changed the Chroma picture
