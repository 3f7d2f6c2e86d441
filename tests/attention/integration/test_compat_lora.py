"""PLADIS with LoRA on the tiny SDXL: unfused (peft layers around the projections) and fused give the same
PLADIS image, the LoRA scale passed in `cross_attention_kwargs` still reaches the LoRA layers, and the adapter
is in place after the call. (FLUX LoRA, fused and not, is covered in test_flux_pipeline.py.)"""

from __future__ import annotations

import numpy as np
import pytest
from diffusers import StableDiffusionXLPipeline

from attention import apply_pladis
from pipeline.pipeline_sdxl import PLADISStableDiffusionXLPipeline
from scripts.cli.assets import TINY_SDXL, TINY_SDXL_LORA
from tests.family_runs import one_thread  # noqa: F401
from tests.tiny import processors_by_name, run_pipe, same_processor_objects


def load(lora: str | None) -> PLADISStableDiffusionXLPipeline:
    """The tiny PLADIS SDXL, without LoRA, with the LoRA loaded (unfused), or loaded and fused."""
    pipe = PLADISStableDiffusionXLPipeline.from_pretrained(TINY_SDXL, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    if lora is not None:
        pipe.load_lora_weights(str(TINY_SDXL_LORA))
    if lora == "fused":
        pipe.fuse_lora()
    return pipe


@pytest.fixture(scope="module")
def pladis_without_lora():
    return run_pipe(load(None), pladis_scale=2.0)


@pytest.fixture(scope="module")
def unfused():
    return load("unfused")


@pytest.mark.slow
def test_unfused_and_fused_lora_give_the_same_pladis_image(unfused, pladis_without_lora):
    boosted = run_pipe(unfused, pladis_scale=2.0)
    np.testing.assert_allclose(boosted, run_pipe(load("fused"), pladis_scale=2.0), atol=1e-5)
    assert np.abs(boosted - pladis_without_lora).max() > 1e-3  # the LoRA really acts under PLADIS
    assert np.abs(boosted - run_pipe(unfused)).max() > 1e-3  # and PLADIS under the LoRA


@pytest.mark.slow
def test_lora_scale_reaches_the_lora_layers_not_the_processors(unfused, pladis_without_lora):
    switched_off = run_pipe(unfused, pladis_scale=2.0, cross_attention_kwargs={"scale": 0.0})
    np.testing.assert_allclose(switched_off, pladis_without_lora, atol=1e-5)


def test_unfused_adapter_and_processors_are_in_place_after_the_call(unfused):
    attn2 = unfused.unet.mid_block.attentions[0].transformer_blocks[0].attn2
    lora_layer_type = type(attn2.to_q)
    before = processors_by_name(unfused.unet)
    run_pipe(unfused, pladis_scale=2.0)
    assert type(attn2.to_q) is lora_layer_type and lora_layer_type.__module__.startswith("peft")
    assert same_processor_objects(unfused.unet, before)


@pytest.mark.slow
def test_apply_pladis_on_a_stock_pipeline_with_lora_matches_the_subclass(unfused):
    stock = StableDiffusionXLPipeline.from_pipe(unfused)
    with apply_pladis(stock, 2.0):
        np.testing.assert_array_equal(run_pipe(stock), run_pipe(unfused, pladis_scale=2.0))
