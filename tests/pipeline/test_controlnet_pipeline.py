"""`PLADISStableDiffusionXLControlNetPipeline` on the tiny SDXL + tiny ControlNet: stock diffusers ControlNet
at λ = 0, the reference example (SEG + PLADIS, no CFG) against an independent SEG, `pladis_controlnet`,
processors restored, and the saved ControlNet asset."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel, StableDiffusionXLControlNetPAGPipeline, StableDiffusionXLControlNetPipeline
from PIL import Image

from attention import PLADISAttnProcessor, apply_pladis
from pipeline.pipeline_controlnet import PLADISStableDiffusionXLControlNetPipeline
from scripts.cli.assets import TINY_CONTROL_IMAGE, TINY_SDXL_CONTROLNET
from scripts.dev.build_tiny_assets import build_tiny_sdxl_controlnet_pipeline
from tests.guidance_reference import (
    perturbed_projection,
    run_latents,
    self_attention_names,
    stock_pag_as_plain_attention,
)
from tests.tiny import processors_by_name, same_processor_objects

# The reference README's ControlNet call (one step: PLADIS attention is the slow part on CPU).
REFERENCE_OPTIONS = {
    "guidance_scale": 1.0,
    "seg_scale": 3.0,
    "seg_blur_sigma": 1e10,
    "seg_applied_layers": ["mid"],
    "num_inference_steps": 1,
}


@pytest.fixture(scope="module")
def pipe():
    return PLADISStableDiffusionXLControlNetPipeline.from_pretrained(TINY_SDXL_CONTROLNET, local_files_only=True)


@pytest.fixture(scope="module")
def controlnet():
    return ControlNetModel.from_pretrained(TINY_SDXL_CONTROLNET / "controlnet")


@pytest.fixture(scope="module")
def control_image():
    return Image.open(TINY_CONTROL_IMAGE).convert("RGB")


def test_defaults_equal_stock_diffusers_controlnet(pipe, control_image):
    stock = StableDiffusionXLControlNetPipeline.from_pretrained(TINY_SDXL_CONTROLNET, local_files_only=True)
    expected = run_latents(stock, image=control_image)
    np.testing.assert_array_equal(run_latents(pipe, image=control_image, pladis_scale=0.0), expected)
    without_control = run_latents(stock, image=control_image, controlnet_conditioning_scale=0.0)
    assert np.abs(expected - without_control).max() > 1e-2  # the tiny ControlNet really steers


@pytest.mark.slow
def test_reference_example_equals_pladis_around_independent_seg(pipe, control_image):
    stock = StableDiffusionXLControlNetPAGPipeline.from_pretrained(TINY_SDXL_CONTROLNET, local_files_only=True)
    mid = {name: (8, 8) for name in self_attention_names(stock.unet, "mid_block.")}
    got = run_latents(pipe, image=control_image, pladis_scale=3.0, **REFERENCE_OPTIONS)
    with (
        apply_pladis(stock, 3.0),
        stock_pag_as_plain_attention(stock, list(mid)),
        perturbed_projection(stock.unet, mid, 1e10, batch_chunks=2),
    ):
        expected = run_latents(stock, image=control_image, guidance_scale=1.0, pag_scale=3.0, num_inference_steps=1)
    np.testing.assert_allclose(got, expected, rtol=0, atol=5e-5)
    plain = run_latents(pipe, image=control_image, guidance_scale=1.0, num_inference_steps=1)
    assert np.abs(got - plain).max() > 1e-3


def test_pladis_controlnet_extends_pladis_to_the_controlnet_and_restores_it(pipe, control_image):
    unet_before, controlnet_before = processors_by_name(pipe.unet), processors_by_name(pipe.controlnet)
    seen = {}

    def record(pipeline, step, timestep, callback_kwargs):
        seen.update(pipeline.controlnet.attn_processors)
        return callback_kwargs

    options = {"image": control_image, "pladis_scale": 3.0, **REFERENCE_OPTIONS}
    extended = run_latents(pipe, pladis_controlnet=True, callback_on_step_end=record, **options)
    cross = [p for name, p in seen.items() if ".attn2." in name]
    assert cross and all(isinstance(p, PLADISAttnProcessor) for p in cross)
    assert not any(isinstance(p, PLADISAttnProcessor) for name, p in seen.items() if ".attn1." in name)
    assert np.abs(extended - run_latents(pipe, **options)).max() > 1e-4  # default: UNet only
    assert same_processor_objects(pipe.unet, unet_before)
    assert same_processor_objects(pipe.controlnet, controlnet_before)


def test_processors_restored_when_the_loop_raises(pipe, control_image):
    unet_before, controlnet_before = processors_by_name(pipe.unet), processors_by_name(pipe.controlnet)

    def fail(pipeline, step, timestep, callback_kwargs):
        raise RuntimeError("boom in the denoising loop")

    with pytest.raises(RuntimeError, match="boom"):
        run_latents(
            pipe,
            image=control_image,
            pladis_scale=3.0,
            pladis_controlnet=True,
            callback_on_step_end=fail,
            **REFERENCE_OPTIONS,
        )
    assert same_processor_objects(pipe.unet, unet_before)
    assert same_processor_objects(pipe.controlnet, controlnet_before)


def test_pag_and_seg_together_are_rejected(pipe, control_image):
    with pytest.raises(ValueError, match="pag_scale.*seg_scale"):
        run_latents(pipe, image=control_image, pag_scale=1.0, seg_scale=1.0)


@pytest.mark.slow  # rebuilds the asset
def test_saved_tiny_controlnet_pipeline_is_what_the_builder_makes(pipe, controlnet):
    fresh = build_tiny_sdxl_controlnet_pipeline()
    for saved_model, fresh_model in ((controlnet, fresh.controlnet), (pipe.unet, fresh.unet)):
        saved, rebuilt = saved_model.state_dict(), fresh_model.state_dict()
        assert saved.keys() == rebuilt.keys() and all(torch.equal(saved[key], rebuilt[key]) for key in saved)
