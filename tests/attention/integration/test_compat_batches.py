"""PLADIS on batches: several prompts (of different lengths, so with different text masks), several images per
prompt and one CPU generator per image give, image by image, what each prompt gives alone — PLADIS works row by
row and never mixes the batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attention import apply_pladis
from tests.family_runs import CALL_OPTIONS, build, one_thread  # noqa: F401

PROMPTS = ["a photo of a red cube", "two dogs on the table with a blue ball in the lake"]


def generate(pipe, family: str, prompts: list[str], seeds: list[int], images_per_prompt: int = 1):
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
    return pipe(
        prompts,
        num_images_per_prompt=images_per_prompt,
        generator=generators,
        num_inference_steps=2,
        height=64,
        width=64,
        output_type="np",
        **CALL_OPTIONS[family],
    ).images


@pytest.mark.slow
@pytest.mark.parametrize("family", ["sd15", "sd3", "pixart"])
def test_batched_images_equal_the_images_made_alone(family):
    pipe = build(family)
    seeds = [11, 12, 13, 14]
    with apply_pladis(pipe, 2.0):
        batch = generate(pipe, family, PROMPTS, seeds, images_per_prompt=2)
        # the second image of the first prompt and the first of the second: both batch axes, half the runs
        alone = [generate(pipe, family, [PROMPTS[index // 2]], [seeds[index]])[0] for index in (1, 2)]
    stock = generate(pipe, family, PROMPTS, seeds, images_per_prompt=2)
    assert batch.shape == (4, 64, 64, 3) and np.isfinite(batch).all()
    np.testing.assert_allclose(batch[1:3], np.stack(alone), atol=2e-5)
    assert np.abs(batch - stock).max() > 1e-3
    assert np.abs(batch[0] - batch[1]).max() > 1e-3  # the generators really differ
