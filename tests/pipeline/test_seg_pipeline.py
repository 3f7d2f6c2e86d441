"""SEG in `PLADISStableDiffusionXLSEGPipeline` against an independent SEG (diffusers' stock PAG loop with the
perturbed chunk's `to_q` output blurred by a numpy hook): no blur is CFG, infinite blur is the mean
query, non-square grids, PLADIS on top; wrong variants (whole batch, keys) are told apart."""

from __future__ import annotations

import numpy as np
import pytest
from diffusers import StableDiffusionXLPAGPipeline, StableDiffusionXLPipeline

from attention import PLADISAttnProcessor, apply_pladis
from attention.perturbation.seg_processor import SmoothedEnergyAttnProcessor
from pipeline.pipeline_sdxl_seg import PLADISStableDiffusionXLSEGPipeline
from scripts.cli.assets import TINY_SDXL
from tests.guidance_reference import (
    perturbed_projection,
    run_latents,
    self_attention_names,
    stock_pag_as_plain_attention,
)
from tests.tiny import processors_by_name, processors_in_effect, same_processor_objects

TOLERANCE = 5e-5  # float32 pipeline vs float64 numpy blur (measured ≤ 7e-6); wrong variants are off by > 1e-2


@pytest.fixture(scope="module")
def pipe():
    return PLADISStableDiffusionXLSEGPipeline.from_pretrained(TINY_SDXL, local_files_only=True)


@pytest.fixture(scope="module")
def stock_pag():
    return StableDiffusionXLPAGPipeline.from_pretrained(TINY_SDXL, local_files_only=True)


def independent_seg(
    stock_pag,
    grids: dict,
    sigma: float,
    seg_scale: float,
    guidance_scale: float = 5.0,
    projection: str = "to_q",
    rows: str = "perturbed",
    **options,
) -> np.ndarray:
    """SEG by the stock PAG loop: plain attention on the perturbed chunk, whose projection a hook blurs."""
    chunks = 3 if guidance_scale > 1 else 2
    with (
        stock_pag_as_plain_attention(stock_pag, list(grids)),
        perturbed_projection(stock_pag.unet, grids, sigma, chunks, projection=projection, rows=rows),
    ):
        return run_latents(stock_pag, pag_scale=seg_scale, guidance_scale=guidance_scale, **options)


@pytest.mark.slow
def test_seg_with_tiny_sigma_is_plain_cfg(pipe, tiny_sdxl_path):
    plain = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_path, local_files_only=True)
    seg = run_latents(pipe, seg_scale=3.0, seg_blur_sigma=0.1)  # kernel size 1: perturbed = cond
    np.testing.assert_allclose(seg, run_latents(plain), rtol=0, atol=1e-6)


@pytest.mark.slow
def test_seg_with_infinite_sigma_is_the_mean_query_perturbation(pipe, stock_pag):
    mid = {name: (8, 8) for name in self_attention_names(pipe.unet, "mid_block.")}  # 64 px → 32 latent → 8×8
    got = run_latents(pipe, seg_scale=3.0)  # default σ = 9999999: infinite
    np.testing.assert_allclose(got, independent_seg(stock_pag, mid, 1e7, 3.0), rtol=0, atol=TOLERANCE)
    whole_batch = independent_seg(stock_pag, mid, 1e7, 3.0, rows="all")
    keys = independent_seg(stock_pag, mid, 1e7, 3.0, projection="to_k")
    assert np.abs(got - whole_batch).max() > 100 * TOLERANCE
    assert np.abs(got - keys).max() > 100 * TOLERANCE


@pytest.mark.slow
def test_seg_on_a_non_square_image_blurs_each_layer_on_its_own_grid(pipe, stock_pag):
    # 64×96 px → a 32×48 latent: 16×24 tokens in down_blocks.1 / up_blocks.1, 8×12 in the mid block.
    # σ = 2 gives 13 taps, clipped to 9 on 8 rows but not on 12 columns.
    grids = {
        name: (16, 24)
        for prefix in ("down_blocks.1.", "up_blocks.1.")
        for name in self_attention_names(pipe.unet, prefix)
    }
    grids.update({name: (8, 12) for name in self_attention_names(pipe.unet, "mid_block.")})
    size = {"height": 64, "width": 96}
    got = run_latents(
        pipe, seg_scale=3.0, seg_blur_sigma=2.0, seg_applied_layers=["down_blocks.1", "mid", "up_blocks.1"], **size
    )
    np.testing.assert_allclose(got, independent_seg(stock_pag, grids, 2.0, 3.0, **size), rtol=0, atol=TOLERANCE)
    assert np.abs(got - run_latents(pipe, **size)).max() > 100 * TOLERANCE  # SEG really acted


def test_seg_with_pladis_without_cfg_equals_pladis_around_independent_seg_and_is_undone(pipe, stock_pag):
    # The reference example's setting: no CFG, SEG scale 3, infinite blur on the mid block, λ = 3.
    mid = {name: (8, 8) for name in self_attention_names(pipe.unet, "mid_block.")}
    options = {
        "guidance_scale": 1.0,
        "seg_scale": 3.0,
        "seg_blur_sigma": 1e10,
        "seg_applied_layers": ["mid"],
        "num_inference_steps": 1,
    }  # PLADIS attention is the slow part on CPU
    seen = {}

    def record(pipeline, step, timestep, callback_kwargs):
        seen.update(processors_in_effect(pipeline.unet))
        return callback_kwargs

    before, hooks_before = processors_by_name(pipe.unet), dict(pipe.unet._forward_pre_hooks)
    got = run_latents(pipe, pladis_scale=3.0, callback_on_step_end=record, **options)
    assert same_processor_objects(pipe.unet, before) and dict(pipe.unet._forward_pre_hooks) == hooks_before
    with apply_pladis(stock_pag, 3.0):
        expected = independent_seg(stock_pag, mid, 1e10, 3.0, guidance_scale=1.0, num_inference_steps=1)
    np.testing.assert_allclose(got, expected, rtol=0, atol=TOLERANCE)
    assert np.abs(got - run_latents(pipe, **options)).max() > 100 * TOLERANCE  # PLADIS really acted
    seg_layers = {name for name, p in seen.items() if isinstance(p, SmoothedEnergyAttnProcessor)}
    assert seg_layers == {f"{name}.processor" for name in mid}
    assert all(isinstance(p, PLADISAttnProcessor) for name, p in seen.items() if ".attn2." in name)
    assert all(p.batch_chunks == 2 for name, p in seen.items() if name in seg_layers)
