"""`PLADISStableDiffusionXLPipeline` on the tiny saved SDXL: identity at λ = 0, same number of UNet
calls, processors restored (also on errors), and the parent's features (FreeU, LoRA, schedulers)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler, LCMScheduler, StableDiffusionXLPipeline
from diffusers.models.attention_processor import AttnProcessor2_0

from attention import PLADISAttnProcessor, apply_pladis
from pipeline.pipeline_sdxl import PLADISStableDiffusionXLPipeline
from scripts.cli.assets import TINY_SDXL_LORA
from tests.tiny import CallCounter, processors_by_name, run_pipe, same_processor_objects


@pytest.fixture
def pipe(tiny_sdxl_path):
    return PLADISStableDiffusionXLPipeline.from_pretrained(tiny_sdxl_path, local_files_only=True)


@pytest.fixture
def stock(tiny_sdxl_path):
    return StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_path, local_files_only=True)


def test_scale_zero_is_bit_identical_to_stock_pipeline(pipe, stock):
    np.testing.assert_array_equal(run_pipe(pipe), run_pipe(stock))
    np.testing.assert_array_equal(run_pipe(pipe, pladis_scale=0.0, pladis_alpha=2.0), run_pipe(stock))


@pytest.mark.slow
@pytest.mark.parametrize("alpha", [1.5, 2.0])
def test_positive_scale_changes_the_image(pipe, stock, alpha):
    baseline = run_pipe(stock)
    changed = run_pipe(pipe, pladis_scale=2.0, pladis_alpha=alpha)
    assert np.isfinite(changed).all()
    assert np.abs(changed - baseline).max() > 1e-3


def test_number_of_unet_calls_is_unchanged(pipe):
    counter = CallCounter(pipe.unet)
    run_pipe(pipe, num_inference_steps=3)
    stock_calls = counter.count
    run_pipe(pipe, num_inference_steps=3, pladis_scale=2.0)
    counter.remove()
    assert stock_calls == 3
    assert counter.count == 2 * stock_calls


def test_pladis_is_installed_on_every_cross_attention_layer_only(pipe):
    seen, scales = {}, set()

    def record(pipeline, step, timestep, callback_kwargs):
        seen.update(pipeline.unet.attn_processors)
        # The settings the installed processors apply belong to this call, read inside it.
        processors = [p for p in seen.values() if isinstance(p, PLADISAttnProcessor)]
        scales.update(p.current_call().settings.pladis_scale for p in processors)
        return callback_kwargs

    run_pipe(pipe, pladis_scale=2.0, callback_on_step_end=record)
    cross = {name for name in seen if ".attn2." in name}
    assert len(cross) == 22  # 2 + 2×2 down, 2 mid, 2×3×2 up: every attn2 of the SDXL topology
    assert all(isinstance(seen[name], PLADISAttnProcessor) for name in cross) and scales == {2.0}
    assert all(seen[name].current_call() is None for name in cross)  # after the call: its settings are gone
    assert all(isinstance(processor, AttnProcessor2_0) for name, processor in seen.items() if name not in cross)


def test_processors_restored_after_call(pipe):
    before = processors_by_name(pipe.unet)
    run_pipe(pipe, pladis_scale=2.0)
    assert same_processor_objects(pipe.unet, before)


def test_processors_restored_when_denoising_loop_raises(pipe):
    before = processors_by_name(pipe.unet)

    def fail(pipeline, step, timestep, callback_kwargs):
        assert not same_processor_objects(pipeline.unet, before)  # PLADIS is in place mid-loop
        raise RuntimeError("boom in the denoising loop")

    with pytest.raises(RuntimeError, match="boom"):
        run_pipe(pipe, pladis_scale=2.0, callback_on_step_end=fail)
    assert same_processor_objects(pipe.unet, before)
    assert run_pipe(pipe).shape == (1, 64, 64, 3)  # still usable


def test_apply_pladis_context_manager_restores_on_error(pipe):
    before = processors_by_name(pipe.unet)
    with pytest.raises(KeyError):
        with apply_pladis(pipe, 1.5):
            assert isinstance(
                pipe.unet.attn_processors["mid_block.attentions.0.transformer_blocks.0.attn2.processor"],
                PLADISAttnProcessor,
            )
            raise KeyError("inside")
    assert same_processor_objects(pipe.unet, before)


def test_apply_pladis_on_stock_pipeline_matches_subclass(pipe, stock):
    with apply_pladis(stock, 2.0):
        via_context = run_pipe(stock)
    np.testing.assert_array_equal(via_context, run_pipe(pipe, pladis_scale=2.0))


@pytest.mark.slow
def test_freeu_combines_with_pladis(pipe, stock):
    for pipeline in (pipe, stock):
        pipeline.enable_freeu(s1=0.9, s2=0.2, b1=1.3, b2=1.4)
    plain = run_pipe(pipe)
    np.testing.assert_array_equal(plain, run_pipe(stock))
    pipe.disable_freeu()
    assert np.abs(plain - run_pipe(pipe)).max() > 1e-4  # FreeU really acted
    pipe.enable_freeu(s1=0.9, s2=0.2, b1=1.3, b2=1.4)
    assert np.abs(run_pipe(pipe, pladis_scale=2.0) - plain).max() > 1e-3


DISTILLED_SCHEDULERS = {
    "dmd2-lcm": (LCMScheduler, {}, {"timesteps": [999, 749, 499, 249]}),
    "lightning-euler-trailing": (EulerDiscreteScheduler, {"timestep_spacing": "trailing"}, {"num_inference_steps": 4}),
    "hyper-ddim-trailing": (DDIMScheduler, {"timestep_spacing": "trailing"}, {"num_inference_steps": 4}),
}


@pytest.mark.slow  # LoRA fusing, per scheduler
@pytest.mark.parametrize("recipe", sorted(DISTILLED_SCHEDULERS))
def test_fused_lora_with_distilled_scheduler(pipe, stock, recipe):
    scheduler_class, scheduler_options, call_options = DISTILLED_SCHEDULERS[recipe]
    for pipeline in (pipe, stock):
        pipeline.load_lora_weights(str(TINY_SDXL_LORA))
        pipeline.fuse_lora()
        pipeline.scheduler = scheduler_class.from_config(pipeline.scheduler.config, **scheduler_options)
    options = {"guidance_scale": 0.0, **call_options}
    counter = CallCounter(pipe.unet)
    plain = run_pipe(pipe, **options)
    np.testing.assert_array_equal(plain, run_pipe(stock, **options))
    before = processors_by_name(pipe.unet)
    boosted = run_pipe(pipe, pladis_scale=2.0, **options)
    counter.remove()
    assert counter.count == 2 * 4  # batch of 1 (no CFG), 4 steps, with and without PLADIS
    assert np.isfinite(boosted).all() and np.abs(boosted - plain).max() > 1e-3
    assert same_processor_objects(pipe.unet, before)


@pytest.mark.slow
def test_lora_changes_the_output(pipe, stock):
    pipe.load_lora_weights(str(TINY_SDXL_LORA))
    pipe.fuse_lora()
    assert np.abs(run_pipe(pipe) - run_pipe(stock)).max() > 1e-3


@pytest.mark.slow
def test_explicit_latents_and_timesteps_pass_through(pipe, stock):
    latents = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(4))
    options = {"latents": latents, "timesteps": [999, 500]}
    np.testing.assert_array_equal(run_pipe(pipe, **options), run_pipe(stock, **options))
