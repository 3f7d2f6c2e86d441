"""The tiny assets load offline with `from_pretrained`, round-trip through `save_pretrained`, and
are exactly what `scripts/dev/build_tiny_assets.py` regenerates."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.pipeline_sdxl import PLADISStableDiffusionXLPipeline
from scripts.dev.build_tiny_assets import build_tiny_sdxl
from tests.tiny import run_pipe


@pytest.mark.slow  # rebuilds the asset
def test_saved_tiny_sdxl_is_what_the_builder_regenerates(tiny_sdxl_path):
    loaded = PLADISStableDiffusionXLPipeline.from_pretrained(tiny_sdxl_path, local_files_only=True)
    rebuilt = build_tiny_sdxl()
    for component in ("unet", "vae", "text_encoder", "text_encoder_2"):
        saved, fresh = getattr(loaded, component).state_dict(), getattr(rebuilt, component).state_dict()
        assert saved.keys() == fresh.keys()
        assert all(torch.equal(saved[key], fresh[key]) for key in saved), component
    assert loaded.tokenizer("a photo of a cat").input_ids == rebuilt.tokenizer("a photo of a cat").input_ids


def test_tiny_sdxl_has_real_sdxl_module_names(tiny_sdxl_path):
    unet = PLADISStableDiffusionXLPipeline.from_pretrained(tiny_sdxl_path, local_files_only=True).unet
    names = set(unet.attn_processors)
    assert "down_blocks.2.attentions.1.transformer_blocks.1.attn2.processor" in names
    assert "mid_block.attentions.0.transformer_blocks.0.attn1.processor" in names
    assert "up_blocks.0.attentions.2.transformer_blocks.1.attn2.processor" in names
    assert not any(name.startswith("down_blocks.0.attentions") for name in names)  # like SDXL


@pytest.mark.slow
def test_save_and_load_round_trip(tiny_sdxl_path, tmp_path):
    pipe = PLADISStableDiffusionXLPipeline.from_pretrained(tiny_sdxl_path, local_files_only=True)
    pipe.save_pretrained(tmp_path / "copy")
    again = PLADISStableDiffusionXLPipeline.from_pretrained(tmp_path / "copy", local_files_only=True)
    assert type(again) is PLADISStableDiffusionXLPipeline
    np.testing.assert_allclose(run_pipe(again, pladis_scale=2.0), run_pipe(pipe, pladis_scale=2.0), atol=1e-5)
