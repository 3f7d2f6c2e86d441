"""Cross-attention statistics: keys are classified by kind, masses add up to one, entmax15 keeps a subset."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import StableDiffusionXLPipeline

from scripts.cli.assets import REPO_ROOT, TOY_MODEL
from scripts.toy import train as train_toy
from scripts.toy.attention_stats import KEY_KINDS, attention_statistics, key_kinds, summary_lines


def test_keys_are_start_words_end_then_padding():
    tokenizer = train_toy.toy_tokenizer()
    kinds = key_kinds(
        tokenizer, ["a red circle on the left", "a red circle on the left and a blue square on the right"]
    )
    names = [[KEY_KINDS[code] for code in row] for row in kinds.tolist()]
    assert names[0] == ["start", *["words"] * 6, "end", *["padding"] * 8]
    assert names[1] == ["start", *["words"] * 13, "end", "padding"]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["asset/tiny-sdxl", TOY_MODEL])
def test_statistics_are_distributions_over_the_keys(model):
    pipe = StableDiffusionXLPipeline.from_pretrained(str(REPO_ROOT / model), dtype=torch.float32, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    prompts = ["a red circle on the left and a blue square on the right", "a green triangle on the right"]
    stats = attention_statistics(pipe, prompts, steps=1, guidance=5.0, seed=0)
    keys = pipe.tokenizer.model_max_length
    assert stats["keys"] == keys and stats["max_entropy"] == pytest.approx(math.log(keys))
    for layer in stats["layers"].values():
        assert sum(layer[kind] for kind in KEY_KINDS) == pytest.approx(1.0, abs=1e-5)
        assert 0 < layer["entropy"] <= math.log(keys) + 1e-6 and 1 <= layer["entmax15_support"] <= keys
        assert 1 / keys - 1e-6 <= layer["max_weight"] <= 1.0
    assert len(summary_lines(stats)) == 4
