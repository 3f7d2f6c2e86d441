"""`PLADISFluxPipeline` on the tiny saved schnell-like and dev-like FLUX pipelines: identity at λ = 0,
same transformer calls, where the processors go, restoration (also on errors), and the parent's
features (true CFG, LoRA, `max_sequence_length`, bf16)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import FluxPipeline, StableDiffusionXLPipeline
from diffusers.models.transformers.transformer_flux import FluxAttnProcessor, FluxIPAdapterAttnProcessor

from attention import PLADISFluxAttnProcessor, apply_pladis
from pipeline.pipeline_flux_pladis import PLADISFluxPipeline
from scripts.cli.assets import TINY_FLUX_DEV, TINY_FLUX_LORA, TINY_FLUX_SCHNELL, TINY_SDXL
from tests.family_runs import one_thread  # noqa: F401
from tests.tiny import CallCounter, processors_by_name, run_pipe, same_processor_objects

VARIANTS = {"schnell": TINY_FLUX_SCHNELL, "dev": TINY_FLUX_DEV}
TEXT_TOKENS = 32  # a short T5 length keeps the tiny runs fast; the pipeline default (512) is tested once


def run_flux(pipe, max_sequence_length: int = TEXT_TOKENS, **kwargs):
    return run_pipe(pipe, max_sequence_length=max_sequence_length, **kwargs)


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def variant(request):
    return request.param


# Loaded once per variant: PLADIS restores every processor and hook, so the tests cannot leak into
# each other through these (tests that change weights or dtype use the `fresh_*` ones).
@pytest.fixture(scope="module")
def pipe(variant):
    return PLADISFluxPipeline.from_pretrained(VARIANTS[variant], local_files_only=True)


@pytest.fixture(scope="module")
def stock(variant):
    return FluxPipeline.from_pretrained(VARIANTS[variant], local_files_only=True)


@pytest.fixture
def fresh_pipe(variant):
    return PLADISFluxPipeline.from_pretrained(VARIANTS[variant], local_files_only=True)


@pytest.fixture
def fresh_stock(variant):
    return FluxPipeline.from_pretrained(VARIANTS[variant], local_files_only=True)


def test_scale_zero_is_bit_identical_to_stock_pipeline(pipe, stock):
    np.testing.assert_array_equal(run_flux(pipe), run_flux(stock))
    np.testing.assert_array_equal(
        run_flux(pipe, pladis_scale=0.0, pladis_alpha=2.0, pladis_single_blocks=True), run_flux(stock)
    )


@pytest.mark.parametrize("alpha", [1.5, 2.0])
def test_positive_scale_changes_the_image(pipe, stock, alpha):
    changed = run_flux(pipe, pladis_scale=2.0, pladis_alpha=alpha)
    assert np.isfinite(changed).all()
    assert np.abs(changed - run_flux(stock)).max() > 1e-3


def test_true_cfg_with_negative_prompt_keeps_transformer_calls(pipe, stock):
    options = {"negative_prompt": "a blue ball", "true_cfg_scale": 3.0, "num_inference_steps": 3}
    counter = CallCounter(pipe.transformer)
    plain = run_flux(pipe, **options)
    assert counter.count == 2 * 3  # true CFG: a conditional and a negative call per step
    boosted = run_flux(pipe, pladis_scale=2.0, **options)
    counter.remove()
    assert counter.count == 2 * 2 * 3
    np.testing.assert_array_equal(plain, run_flux(stock, **options))
    assert np.abs(plain - run_flux(pipe)).max() > 1e-3  # the negative prompt really acted
    assert np.isfinite(boosted).all() and np.abs(boosted - plain).max() > 1e-3


def installed_processors(pipe, **options) -> tuple[dict, set]:
    """The processors in place during the denoising loop, and the text lengths that the single-stream
    PLADIS processors held then (read in the step callback, right after the transformer calls)."""
    seen, single_stream_tokens = {}, set()

    def record(pipeline, step, timestep, callback_kwargs):
        seen.update(pipeline.transformer.attn_processors)
        single_stream_tokens.update(
            processor.current_call().recorded.tokens
            for name, processor in seen.items()
            if name.startswith("single_transformer_blocks.")
            and isinstance(processor, PLADISFluxAttnProcessor)
            and processor.current_call() is not None
        )
        return callback_kwargs

    if "prompt_embeds" in options:
        pipe(**options, num_inference_steps=2, height=64, width=64, output_type="np", callback_on_step_end=record)
    else:
        run_flux(pipe, callback_on_step_end=record, **options)
    return seen, single_stream_tokens


def test_pladis_goes_on_double_stream_blocks_only_by_default(pipe):
    seen, _ = installed_processors(pipe, pladis_scale=2.0)
    double = {name for name in seen if name.startswith("transformer_blocks.")}
    assert len(double) == 2 and len(seen) == 4
    assert all(isinstance(seen[name], PLADISFluxAttnProcessor) for name in double)
    assert all(type(processor) is FluxAttnProcessor for name, processor in seen.items() if name not in double)


@pytest.mark.parametrize("max_sequence_length", [16, 77])
def test_single_block_option_uses_the_text_length_of_the_call(pipe, max_sequence_length):
    seen, tokens = installed_processors(
        pipe, pladis_scale=2.0, pladis_single_blocks=True, max_sequence_length=max_sequence_length
    )
    assert len(seen) == 4 and all(isinstance(processor, PLADISFluxAttnProcessor) for processor in seen.values())
    assert tokens == {max_sequence_length}
    single = [processor for name, processor in seen.items() if name.startswith("single_transformer_blocks.")]
    assert len(single) == 2 and all(processor.current_call() is None for processor in single)  # per call


def test_single_block_option_changes_the_image(pipe):
    double_only = run_flux(pipe, pladis_scale=2.0)
    with_single = run_flux(pipe, pladis_scale=2.0, pladis_single_blocks=True)
    assert np.isfinite(with_single).all()
    assert np.abs(with_single - double_only).max() > 1e-4


def test_text_length_comes_from_the_prompt_embeds_the_pipeline_passes(pipe):
    prompt_embeds, pooled, _ = pipe.encode_prompt("a photo of a red cube", prompt_2=None, max_sequence_length=20)
    _, tokens = installed_processors(
        pipe,
        prompt_embeds=prompt_embeds[:, :11],
        pooled_prompt_embeds=pooled,
        pladis_scale=2.0,
        pladis_single_blocks=True,
    )
    assert tokens == {11}  # neither max_sequence_length (512 by default) nor the tokenizer's length


def test_default_max_sequence_length_runs(pipe, stock):
    np.testing.assert_array_equal(run_pipe(pipe), run_pipe(stock))  # 512 text tokens
    assert np.abs(run_pipe(pipe, pladis_scale=2.0, pladis_single_blocks=True) - run_pipe(stock)).max() > 1e-3


def test_processors_and_hooks_restored_after_call(pipe):
    before, hooks = processors_by_name(pipe.transformer), dict(pipe.transformer._forward_pre_hooks)
    run_flux(pipe, pladis_scale=2.0, pladis_single_blocks=True)
    assert same_processor_objects(pipe.transformer, before)
    assert pipe.transformer._forward_pre_hooks == hooks


def test_processors_and_hooks_restored_when_denoising_loop_raises(pipe):
    before, hooks = processors_by_name(pipe.transformer), dict(pipe.transformer._forward_pre_hooks)

    def fail(pipeline, step, timestep, callback_kwargs):
        assert not same_processor_objects(pipeline.transformer, before)  # PLADIS is in place mid-loop
        assert len(pipeline.transformer._forward_pre_hooks) == len(hooks) + 1
        raise RuntimeError("boom in the denoising loop")

    with pytest.raises(RuntimeError, match="boom"):
        run_flux(pipe, pladis_scale=2.0, pladis_single_blocks=True, callback_on_step_end=fail)
    assert same_processor_objects(pipe.transformer, before)
    assert pipe.transformer._forward_pre_hooks == hooks
    assert run_flux(pipe).shape == (1, 64, 64, 3)  # still usable


def test_apply_pladis_on_stock_pipeline_matches_subclass(pipe, stock):
    with apply_pladis(stock, 2.0, pladis_single_blocks=True):
        via_context = run_flux(stock)
    np.testing.assert_array_equal(via_context, run_flux(pipe, pladis_scale=2.0, pladis_single_blocks=True))


@pytest.mark.slow
@pytest.mark.parametrize("fuse", [False, True])
def test_lora_combines_with_pladis(fresh_pipe, fresh_stock, fuse):
    pipe, stock = fresh_pipe, fresh_stock
    without_lora = run_flux(pipe)
    for pipeline in (pipe, stock):
        pipeline.load_lora_weights(str(TINY_FLUX_LORA))
        if fuse:
            pipeline.fuse_lora()
    plain = run_flux(pipe)
    np.testing.assert_array_equal(plain, run_flux(stock))
    before = processors_by_name(pipe.transformer)
    boosted = run_flux(pipe, pladis_scale=2.0, pladis_single_blocks=True)
    assert np.isfinite(boosted).all() and np.abs(boosted - plain).max() > 1e-3
    assert same_processor_objects(pipe.transformer, before)
    assert np.abs(plain - without_lora).max() > 1e-3  # the LoRA really acted


def test_fused_qkv_projections_combine_with_pladis(fresh_pipe):
    pipe = fresh_pipe
    unfused = run_flux(pipe, pladis_scale=2.0, pladis_single_blocks=True)
    pipe.transformer.fuse_qkv_projections()
    np.testing.assert_allclose(run_flux(pipe, pladis_scale=2.0, pladis_single_blocks=True), unfused, atol=1e-5)


def test_bfloat16_pipeline_is_finite(fresh_pipe):
    pipe = fresh_pipe.to(torch.bfloat16)
    plain = run_flux(pipe, output_type="latent")  # latents: the tiny VAE is slow in bf16 on CPU
    boosted = run_flux(pipe, output_type="latent", pladis_scale=2.0, pladis_single_blocks=True)
    assert boosted.dtype == torch.bfloat16 and torch.isfinite(boosted).all()
    assert (boosted - plain).abs().max() > 1e-2


def test_single_blocks_option_on_a_unet_pipeline_raises():
    sdxl = StableDiffusionXLPipeline.from_pretrained(TINY_SDXL, local_files_only=True)
    with pytest.raises(ValueError, match="single-stream"):
        with apply_pladis(sdxl, 2.0, pladis_single_blocks=True):
            pass


def test_a_layer_with_another_processor_is_refused_not_silently_replaced(fresh_pipe):
    class MyIPAdapter(FluxIPAdapterAttnProcessor):
        """A user's own processor (even one derived from a stock one) may do anything: refuse, don't guess."""

    fresh_pipe.transformer.transformer_blocks[1].attn.set_processor(MyIPAdapter(32, 32))
    before = processors_by_name(fresh_pipe.transformer)
    with pytest.raises(ValueError, match="MyIPAdapter on transformer_blocks.1.attn .* FluxIPAdapterAttnProcessor"):
        run_flux(fresh_pipe, pladis_scale=2.0)
    assert same_processor_objects(fresh_pipe.transformer, before)
