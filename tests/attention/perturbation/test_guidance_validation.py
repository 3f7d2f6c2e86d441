"""The PAG/SEG argument checks on plain values, and layer-id validation agreeing with the layers diffusers'
own PAG machinery finds (so a call is rejected up front exactly when the stock loop would fail mid-call)."""

from __future__ import annotations

import math

import pytest
from diffusers import StableDiffusionXLPAGPipeline
from diffusers.models.attention_processor import PAGCFGIdentitySelfAttnProcessor2_0

from attention import swapped_attn_processors
from attention.perturbation.perturbed_calls import perturbed_layer_names
from attention.perturbation.seg_sigma import check_seg_blur_sigma
from attention.validation import check_applied_layers, check_guidance_scale
from pipeline.pipeline_sdxl_seg import PLADISStableDiffusionXLSEGPipeline
from scripts.cli.assets import TINY_SDXL


@pytest.fixture(scope="module")
def stock():
    return StableDiffusionXLPAGPipeline.from_pretrained(TINY_SDXL, local_files_only=True)


@pytest.mark.parametrize(
    "value,error",
    [
        (-1.0, ValueError),
        (math.nan, ValueError),
        (math.inf, ValueError),
        ("1", TypeError),
        (None, TypeError),
        (True, TypeError),
    ],
)
def test_bad_guidance_scales_name_the_argument(value, error):
    with pytest.raises(error, match="seg_scale"):
        check_guidance_scale("seg_scale", value)


def test_guidance_scale_accepts_zero_and_positive_numbers():
    assert check_guidance_scale("pag_scale", 0) == 0.0 and check_guidance_scale("pag_scale", 3) == 3.0


@pytest.mark.parametrize(
    "value,error", [(0.0, ValueError), (-2.0, ValueError), (math.nan, ValueError), ("9", TypeError)]
)
def test_bad_blur_sigma_is_rejected(value, error):
    with pytest.raises(error, match="seg_blur_sigma"):
        check_seg_blur_sigma(value)


def test_infinite_blur_sigma_is_accepted():
    assert check_seg_blur_sigma(math.inf) == math.inf and check_seg_blur_sigma(1e10) == 1e10


def test_a_single_layer_id_becomes_a_list():
    names = ["mid_block.attentions.0.transformer_blocks.0.attn1"]
    assert check_applied_layers("pag_applied_layers", "mid", names) == ["mid"]


@pytest.mark.parametrize(
    "layer_id",
    [
        "mid",
        "down_blocks.2",
        "up_blocks.0.attentions.1",
        "down_blocks.1.attentions.0",
        "transformer_blocks.1",
        "up_blocks.(0|1)",
        "attn1",
        "down.block_1",
        "up_blocks.2",
        "down_blocks.0",
        "mid_block.attentions.1",
        "attn2",
        "blocks.3",
    ],
)
def test_layer_check_and_per_call_layers_agree_with_diffusers_pag(stock, layer_id):
    diffusers_layers = set()
    try:
        with swapped_attn_processors(stock.unet, {}):
            stock._set_pag_attn_processor([layer_id], do_classifier_free_guidance=True)
            diffusers_layers = {
                name.removesuffix(".processor")
                for name, processor in stock.unet.attn_processors.items()
                if isinstance(processor, PAGCFGIdentitySelfAttnProcessor2_0)
            }
        diffusers_finds_layers = True
    except ValueError:
        diffusers_finds_layers = False
    assert perturbed_layer_names(stock.unet, [layer_id]) == diffusers_layers  # what a call perturbs (per call)
    names = PLADISStableDiffusionXLSEGPipeline._self_attention_layer_names(stock)
    try:
        check_applied_layers("pag_applied_layers", [layer_id], names)
        accepted = True
    except ValueError as error:
        assert "pag_applied_layers" in str(error)
        accepted = False
    assert accepted == diffusers_finds_layers
