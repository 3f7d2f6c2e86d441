"""`PLADISStableDiffusionXLSEGPipeline` as a PAG pipeline: equal to diffusers' `StableDiffusionXLPAGPipeline`
on the same layers, plain CFG by default, PLADIS on top, clear errors, and its state restored after
every call (the stock PAG pipeline leaves processors swapped when a call raises)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from diffusers import StableDiffusionXLPAGPipeline, StableDiffusionXLPipeline
from diffusers.models.attention_processor import PAGCFGIdentitySelfAttnProcessor2_0

from attention import PLADISAttnProcessor, apply_pladis
from pipeline import pipeline_sdxl_seg
from pipeline.pipeline_sdxl_seg import PLADISStableDiffusionXLSEGPipeline
from scripts.cli.assets import TINY_SDXL
from tests.guidance_reference import run_latents
from tests.tiny import processors_by_name, processors_in_effect, run_pipe, same_processor_objects

MID_ATTN1 = "mid_block.attentions.0.transformer_blocks.0.attn1.processor"


@pytest.fixture(scope="module")
def pipe():
    return PLADISStableDiffusionXLSEGPipeline.from_pretrained(TINY_SDXL, local_files_only=True)


@pytest.fixture(scope="module")
def stock_pag():
    return StableDiffusionXLPAGPipeline.from_pretrained(TINY_SDXL, local_files_only=True)


def pag_state(pipeline) -> tuple:
    """What PAGMixin keeps on the pipeline object, with processor objects compared by identity."""
    return (
        list(pipeline.pag_applied_layers),
        [id(p) for p in pipeline._pag_attn_processors],
        getattr(pipeline, "_pag_scale", None),
        getattr(pipeline, "_pag_adaptive_scale", None),
    )


@pytest.mark.slow  # per layer set and scale
@pytest.mark.parametrize(
    "layers,guidance_scale,adaptive",
    [
        (["mid"], 5.0, 0.0),
        (["down_blocks.2", "up_blocks.0.attentions.1"], 1.0, 0.0),  # no CFG: batch [cond, perturbed]
        (["mid"], 5.0, 0.002),  # timestep-adaptive PAG scale
    ],
)
def test_pag_equals_diffusers_pag_pipeline(pipe, stock_pag, layers, guidance_scale, adaptive):
    stock_pag.set_pag_applied_layers(layers)
    options = {"guidance_scale": guidance_scale, "pag_adaptive_scale": adaptive}
    expected = run_latents(stock_pag, pag_scale=3.0, **options)
    np.testing.assert_array_equal(run_latents(pipe, pag_scale=3.0, pag_applied_layers=layers, **options), expected)


def test_default_call_is_plain_sdxl_cfg_and_pag_changes_it(pipe, tiny_sdxl_path):
    plain = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_path, local_files_only=True)
    cfg = run_pipe(pipe)
    np.testing.assert_array_equal(cfg, run_pipe(plain))
    assert np.abs(run_pipe(pipe, pag_scale=3.0) - cfg).max() > 1e-2


@pytest.mark.slow
def test_pag_layers_default_to_the_pipelines_own(tiny_sdxl_path, stock_pag):
    custom = PLADISStableDiffusionXLSEGPipeline.from_pretrained(
        tiny_sdxl_path, local_files_only=True, pag_applied_layers=["down_blocks.2"]
    )
    stock_pag.set_pag_applied_layers(["down_blocks.2"])
    np.testing.assert_array_equal(run_latents(custom, pag_scale=2.0), run_latents(stock_pag, pag_scale=2.0))
    assert custom.pag_applied_layers == ["down_blocks.2"]


def test_pag_with_pladis_equals_apply_pladis_around_diffusers_pag(pipe, stock_pag):
    stock_pag.set_pag_applied_layers(["mid"])
    one_step = {"pag_scale": 3.0, "num_inference_steps": 1}  # PLADIS attention is the slow part on CPU
    with apply_pladis(stock_pag, 2.0):
        expected = run_latents(stock_pag, **one_step)
    got = run_latents(pipe, pladis_scale=2.0, **one_step)
    np.testing.assert_array_equal(got, expected)
    assert np.abs(got - run_latents(pipe, **one_step)).max() > 1e-2


def test_pag_and_pladis_sit_on_self_and_cross_attention_during_the_call(pipe):
    seen = {}

    def record(pipeline, step, timestep, callback_kwargs):
        seen.update(processors_in_effect(pipeline.unet))
        return callback_kwargs

    before = processors_by_name(pipe.unet)
    state = pag_state(pipe)
    run_latents(pipe, pag_scale=3.0, pladis_scale=2.0, num_inference_steps=1, callback_on_step_end=record)
    assert isinstance(seen[MID_ATTN1], PAGCFGIdentitySelfAttnProcessor2_0)
    assert all(isinstance(p, PLADISAttnProcessor) for name, p in seen.items() if ".attn2." in name)
    assert same_processor_objects(pipe.unet, before) and pag_state(pipe) == state


@pytest.mark.parametrize(
    "options",
    [
        {"pag_scale": 3.0},
        {"pag_scale": 3.0, "pladis_scale": 2.0, "pladis_alpha": 2.0},
        {"seg_scale": 3.0, "seg_blur_sigma": 1.0},
    ],
)
def test_processors_and_state_restored_when_the_loop_raises(pipe, options):
    before = processors_by_name(pipe.unet)
    state = pag_state(pipe)

    def fail(pipeline, step, timestep, callback_kwargs):
        assert not same_processor_objects(pipeline.unet, before)  # guidance is in place mid-loop
        raise RuntimeError("boom in the denoising loop")

    with pytest.raises(RuntimeError, match="boom"):
        run_latents(pipe, callback_on_step_end=fail, **options)
    assert same_processor_objects(pipe.unet, before) and pag_state(pipe) == state


def test_pag_and_seg_together_are_rejected(pipe):
    with pytest.raises(ValueError, match="pag_scale.*seg_scale"):
        run_pipe(pipe, pag_scale=1.0, seg_scale=1.0)


@pytest.mark.parametrize("argument", ["pag_applied_layers", "seg_applied_layers"])
@pytest.mark.parametrize("layers", [["down.block_1"], ["mid", "up.block_0.attentions_0"], ["up_blocks.9"], ["("]])
def test_unknown_layers_name_the_argument_and_leave_the_pipeline_usable(pipe, argument, layers):
    before, state = processors_by_name(pipe.unet), pag_state(pipe)
    scale = "pag_scale" if argument.startswith("pag") else "seg_scale"
    with pytest.raises(ValueError, match=argument):
        run_pipe(pipe, **{scale: 3.0, argument: layers})
    assert same_processor_objects(pipe.unet, before) and pag_state(pipe) == state


def test_pipeline_still_works_after_a_rejected_call(pipe):
    with pytest.raises(ValueError, match="seg_applied_layers"):
        run_pipe(pipe, seg_scale=3.0, seg_applied_layers=["down.block_1"])
    assert np.isfinite(run_latents(pipe, seg_scale=3.0, num_inference_steps=1)).all()


@pytest.mark.parametrize(
    "options,error,name",
    [
        ({"pag_scale": -1.0}, ValueError, "pag_scale"),
        ({"pag_scale": math.nan}, ValueError, "pag_scale"),
        ({"pag_scale": 1.0, "pag_adaptive_scale": -0.1}, ValueError, "pag_adaptive_scale"),
        ({"seg_scale": math.inf}, ValueError, "seg_scale"),
        ({"seg_scale": 3.0, "seg_blur_sigma": -1.0}, ValueError, "seg_blur_sigma"),
        ({"seg_scale": 3.0, "seg_blur_sigma": math.nan}, ValueError, "seg_blur_sigma"),
        ({"seg_scale": 3.0, "seg_blur_sigma": 0.0}, ValueError, "seg_blur_sigma"),
        ({"seg_scale": "3"}, TypeError, "seg_scale"),
        ({"seg_scale": 3.0, "pag_adaptive_scale": 0.1}, ValueError, "pag_adaptive_scale"),
        ({"pag_scale": 1.0, "pag_applied_layers": []}, ValueError, "pag_applied_layers"),
        ({"seg_scale": 1.0, "seg_applied_layers": [2]}, TypeError, "seg_applied_layers"),
        ({"pladis_scale": -2.0}, ValueError, "pladis_scale"),
    ],
)
def test_bad_arguments_fail_naming_the_argument(pipe, options, error, name):
    before, state = processors_by_name(pipe.unet), pag_state(pipe)
    with pytest.raises(error, match=name):
        run_pipe(pipe, **options)
    assert same_processor_objects(pipe.unet, before) and pag_state(pipe) == state


def test_reference_name_is_the_same_pipeline():
    assert pipeline_sdxl_seg.PLADISStableDiffusionXLPipeline is PLADISStableDiffusionXLSEGPipeline


@pytest.mark.slow
def test_the_pag_overlap_check_sees_this_calls_layers_not_the_last_calls(pipe, monkeypatch):
    """apply_pladis checks PAG's layers against the PLADIS layers: it must see the layers of the call
    it is part of (here "mid" after a call on "down_blocks.2"), not what an earlier call left."""
    from attention.integration import install

    seen = []
    check = install.check_pag_leaves_pladis_layers
    monkeypatch.setattr(
        install,
        "check_pag_leaves_pladis_layers",
        lambda pipeline, *rest: seen.append(list(pipeline.pag_applied_layers)) or check(pipeline, *rest),
    )
    run_pipe(pipe, pag_scale=1.0, pag_applied_layers=["down_blocks.2"], pladis_scale=2.0, num_inference_steps=1)
    run_pipe(pipe, pag_scale=1.0, pag_applied_layers=["mid"], pladis_scale=2.0, num_inference_steps=1)
    assert seen == [["down_blocks.2"], ["mid"]]
