"""The tiny FLUX assets load offline, are exactly what `scripts/dev/build_tiny_assets.py` regenerates, and
are schnell-like (no guidance embedding) and dev-like (guidance embedding, dynamic time shift)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from pipeline.pipeline_flux_pladis import PLADISFluxPipeline
from scripts.cli.assets import TINY_FLUX_DEV, TINY_FLUX_LORA, TINY_FLUX_SCHNELL
from scripts.dev.build_tiny_assets import T5_MAX_LENGTH, build_tiny_flux, save_tiny_flux_lora

VARIANTS = {"schnell": (TINY_FLUX_SCHNELL, False), "dev": (TINY_FLUX_DEV, True)}


def public_config(config) -> dict:
    """A config without the bookkeeping keys (`_class_name`, `_diffusers_version`, ...)."""
    return {key: value for key, value in config.items() if not key.startswith("_")}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_saved_tiny_flux_is_what_the_builder_regenerates(variant):
    folder, guidance_embeds = VARIANTS[variant]
    loaded = PLADISFluxPipeline.from_pretrained(folder, local_files_only=True)
    rebuilt = build_tiny_flux(guidance_embeds)
    for component in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        saved, fresh = getattr(loaded, component).state_dict(), getattr(rebuilt, component).state_dict()
        assert saved.keys() == fresh.keys()
        assert all(torch.equal(saved[key], fresh[key]) for key in saved), component
    assert public_config(loaded.scheduler.config) == public_config(rebuilt.scheduler.config)
    for tokenizer in ("tokenizer", "tokenizer_2"):
        saved, fresh = getattr(loaded, tokenizer), getattr(rebuilt, tokenizer)
        assert saved("a photo of a cat xyz").input_ids == fresh("a photo of a cat xyz").input_ids
        assert saved.model_max_length == fresh.model_max_length
    assert loaded.tokenizer_2.model_max_length == T5_MAX_LENGTH


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_tiny_flux_has_the_variant_features(variant):
    folder, guidance_embeds = VARIANTS[variant]
    pipe = PLADISFluxPipeline.from_pretrained(folder, local_files_only=True)
    config = pipe.transformer.config
    assert config.guidance_embeds is guidance_embeds
    assert pipe.scheduler.config.use_dynamic_shifting is guidance_embeds
    assert (config.num_layers, config.num_single_layers, config.num_attention_heads) == (2, 2, 2)
    assert pipe.vae.config.latent_channels == 16 and config.in_channels == 4 * 16
    assert not any(module.training for module in pipe.components.values() if isinstance(module, torch.nn.Module))
    assert len(pipe.tokenizer_2("a photo of a cat").input_ids) == 6  # 5 whole words + </s>


@pytest.mark.slow  # rebuilds the asset
def test_saved_tiny_flux_lora_is_what_the_builder_regenerates(tmp_path):
    rebuilt = load_file(save_tiny_flux_lora(tmp_path))
    saved = load_file(TINY_FLUX_LORA)
    assert saved.keys() == rebuilt.keys() and len(saved) > 0
    assert all(key.startswith("transformer.") for key in saved)
    assert all(torch.equal(saved[key], rebuilt[key]) for key in saved)
