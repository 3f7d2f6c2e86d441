"""The toy evaluation: its settings grid, paired bootstrap intervals, and one tiny run through `evaluate.py --toy`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from scripts import evaluate
from scripts.toy.data import HELD_OUT_PAIRS, evaluation_scenes, held_out_pairs
from scripts.toy.evaluate import bootstrap_interval, paired_bootstrap, settings_grid


def test_grid_runs_the_baseline_once_per_guidance_first():
    grid = settings_grid([5.0, 1.0], [0.0, 2.0, 1.0], [1.5, 2.0])
    assert grid[:5] == [(5.0, 0.0, 1.5), (5.0, 2.0, 1.5), (5.0, 1.0, 1.5), (5.0, 2.0, 2.0), (5.0, 1.0, 2.0)]
    assert len(grid) == 10 and sum(scale == 0 for _, scale, _ in grid) == 2


def test_paired_bootstrap_brackets_the_mean_difference_and_is_zero_for_identical_runs():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2, 400).astype(float)
    better = np.where(rng.random(400) < 0.2, 1.0, base)
    mean, low, high = paired_bootstrap(base, better, 2000, seed=1)
    assert mean == pytest.approx((better - base).mean()) and 0 < low < mean < high
    assert paired_bootstrap(base, base, 500, seed=1) == (0.0, 0.0, 0.0)
    low, high = bootstrap_interval(base, 2000, seed=1)
    assert low < base.mean() < high and high - low < 0.15


def test_evaluation_prompts_cover_every_held_out_pair_once_at_the_default_share():
    chosen = evaluation_scenes(200, held_out_share=0.3)
    held = [(scene.left, scene.right) for scene, is_held, _ in chosen if is_held]
    assert len(held) == len(set(held)) == HELD_OUT_PAIRS and set(held) == held_out_pairs()
    assert all((scene.left, scene.right) not in held_out_pairs() for scene, is_held, _ in chosen if not is_held)


@pytest.fixture
def restores_threads():
    """The toy evaluation fixes torch's thread count (the images depend on it); give later tests theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow  # command-line runs
def test_one_command_generates_scores_and_resumes(tmp_path, restores_threads):
    options = [
        "--toy",
        "--count",
        "4",
        "--steps",
        "1",
        "--scales",
        "0,2",
        "--alphas",
        "1.5",
        "--guidance",
        "1",
        "--batch-size",
        "4",
        "--resamples",
        "50",
        "--out",
        str(tmp_path),
    ]
    results = evaluate.main(options)
    assert list(results["settings"]) == ["g1_l0", "g1_l2_a1.5"] and results["complete"]
    assert all(len(entry["scores"]["image"]) == 4 for entry in results["settings"].values())
    table = (tmp_path / "table.md").read_text()
    assert table.count("\n| 1 |") == 2 and "Δ image" in table
    first = json.loads((tmp_path / "results.json").read_text())
    evaluate.main(options)  # everything is there: nothing is generated again
    assert json.loads((tmp_path / "results.json").read_text())["settings"] == first["settings"]
