"""The PLADIS pipelines' keywords default to None (issue 23 item 3): a call that gives none keeps what an
enclosing `apply_pladis` set (0 when nothing did) — so `with apply_pladis(pipe, 2.0): pipe(prompt)` is PLADIS,
not the stock image — and a keyword given replaces the enclosing value for that call only; the window and layer
keywords reach the attention like λ."""

from __future__ import annotations

import numpy as np
import pytest
from diffusers import StableDiffusionXLPipeline

from attention import apply_pladis
from pipeline.pipeline_flux_pladis import PLADISFluxPipeline
from pipeline.pipeline_sdxl import PLADISStableDiffusionXLPipeline
from pipeline.pipeline_sdxl_seg import PLADISStableDiffusionXLSEGPipeline
from scripts.cli.assets import TINY_FLUX_SCHNELL, TINY_SDXL
from tests.family_runs import one_thread  # noqa: F401
from tests.tiny import run_pipe

OPTIONS = {"num_inference_steps": 4}


@pytest.fixture(scope="module")
def sdxl():
    pipe = PLADISStableDiffusionXLPipeline.from_pretrained(TINY_SDXL, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def stock(sdxl):
    return StableDiffusionXLPipeline.from_pipe(sdxl)


def test_an_enclosing_apply_pladis_is_kept_by_a_pladis_pipeline_call(sdxl, stock):
    with apply_pladis(sdxl, 2.0, pladis_alpha=2.0):
        kept = run_pipe(sdxl, **OPTIONS)
    np.testing.assert_array_equal(kept, run_pipe(sdxl, pladis_scale=2.0, pladis_alpha=2.0, **OPTIONS))
    assert np.abs(kept - run_pipe(stock, **OPTIONS)).max() > 1e-3


def test_without_any_pladis_keyword_or_enclosing_call_it_is_the_stock_pipeline(sdxl, stock):
    np.testing.assert_array_equal(run_pipe(sdxl, **OPTIONS), run_pipe(stock, **OPTIONS))
    np.testing.assert_array_equal(
        run_pipe(sdxl, pladis_stop=0.5, pladis_alpha=2.0, **OPTIONS), run_pipe(stock, **OPTIONS)
    )


@pytest.mark.slow
def test_a_keyword_given_replaces_the_enclosing_value_for_that_call_only(sdxl, stock):
    with apply_pladis(sdxl, 2.0, pladis_alpha=2.0, pladis_layers="mid"):
        off = run_pipe(sdxl, pladis_scale=0.0, **OPTIONS)
        windowed = run_pipe(sdxl, pladis_start=0.5, **OPTIONS)
        again = run_pipe(sdxl, **OPTIONS)
    np.testing.assert_array_equal(off, run_pipe(stock, **OPTIONS))
    with apply_pladis(stock, 2.0, pladis_alpha=2.0, pladis_layers="mid", pladis_start=0.5):
        np.testing.assert_array_equal(windowed, run_pipe(stock, **OPTIONS))
    np.testing.assert_array_equal(
        again, run_pipe(sdxl, pladis_scale=2.0, pladis_alpha=2.0, pladis_layers="mid", **OPTIONS)
    )


@pytest.mark.slow
def test_window_and_layer_keywords_are_those_of_apply_pladis(sdxl, stock):
    keywords = {"pladis_start": 0.25, "pladis_stop": 0.75, "pladis_layers": ["mid", "up_blocks.0"]}
    through_call = run_pipe(sdxl, pladis_scale=2.0, **keywords, **OPTIONS)
    with apply_pladis(stock, 2.0, **keywords):
        np.testing.assert_array_equal(through_call, run_pipe(stock, **OPTIONS))


@pytest.mark.slow
def test_the_seg_pipeline_keeps_an_enclosing_apply_pladis_under_seg(sdxl):
    seg = PLADISStableDiffusionXLSEGPipeline.from_pipe(sdxl)
    options = {"seg_scale": 3.0, "seg_blur_sigma": 10.0, **OPTIONS}
    with apply_pladis(seg, 2.0, pladis_stop=0.5):
        kept = run_pipe(seg, **options)
    np.testing.assert_array_equal(kept, run_pipe(seg, pladis_scale=2.0, pladis_stop=0.5, **options))
    assert np.abs(kept - run_pipe(seg, **options)).max() > 1e-4


@pytest.mark.slow
def test_flux_single_blocks_and_layer_keywords_replace_each_other():
    flux = PLADISFluxPipeline.from_pretrained(TINY_FLUX_SCHNELL, local_files_only=True)
    flux.set_progress_bar_config(disable=True)
    options = {"max_sequence_length": 16, "guidance_scale": 0.0}
    with apply_pladis(flux, 2.0, pladis_single_blocks=True):
        only_single = run_pipe(flux, pladis_layers="single_transformer_blocks", **options)
    np.testing.assert_array_equal(
        only_single, run_pipe(flux, pladis_scale=2.0, pladis_layers="single_transformer_blocks", **options)
    )
    with apply_pladis(flux, 2.0, pladis_layers="single_transformer_blocks"):
        everything = run_pipe(flux, pladis_single_blocks=True, **options)
    np.testing.assert_array_equal(everything, run_pipe(flux, pladis_scale=2.0, pladis_single_blocks=True, **options))


def test_an_enclosing_settings_objects_kernel_runs_in_a_pipeline_call_and_kernel_is_no_keyword(sdxl, monkeypatch):
    """`kernel` is a `PLADISSettings` field, not a pipeline keyword: given to the pipeline it is refused (diffusers'
    `**kwargs` would swallow it), and the way its message names, an enclosing `apply_pladis` with the settings
    object, runs that kernel in every PLADIS layer of the call (here the sync-free torch path, where the CPU's
    `auto` is the chunked one) and gives the same image to float32 rounding."""
    from dataclasses import replace

    from attention import PLADISSettings
    from attention.kernels import table as kernel_table

    with pytest.raises(TypeError, match=r"'kernel' \(a PLADISSettings field, not a pipeline keyword"):
        sdxl("a cat", pladis_scale=2.0, kernel="torch", **OPTIONS)
    kernels = []
    sync_free = kernel_table._BY_NAME["torch"]
    recording = replace(
        sync_free, cross_attention=lambda call: kernels.append(call.settings.kernel) or sync_free.cross_attention(call)
    )
    monkeypatch.setitem(kernel_table._BY_NAME, "torch", recording)
    monkeypatch.setattr(
        kernel_table, "KERNELS", tuple(recording if k is sync_free else k for k in kernel_table.KERNELS)
    )
    automatic = run_pipe(sdxl, pladis_scale=2.0, **OPTIONS)
    assert kernels == []
    with apply_pladis(sdxl, PLADISSettings(2.0, kernel="torch")):
        chosen = run_pipe(sdxl, **OPTIONS)
    assert kernels and set(kernels) == {"torch"}
    np.testing.assert_allclose(chosen, automatic, atol=2e-3)
