"""PLADIS pipelines made with `from_pipe` share the denoiser with the pipeline they came from; a PLADIS call on
one leaves the shared model's processors, and the other pipeline's images, exactly as they were."""

from __future__ import annotations

import numpy as np
import pytest
from diffusers import FluxPipeline, StableDiffusionImg2ImgPipeline, StableDiffusionXLPipeline

from attention import apply_pladis
from pipeline.pipeline_flux_pladis import PLADISFluxPipeline
from pipeline.pipeline_sdxl import PLADISStableDiffusionXLPipeline
from scripts.cli.assets import TINY_FLUX_SCHNELL, TINY_SDXL
from tests.family_runs import build, one_thread, run_family  # noqa: F401
from tests.tiny import processors_by_name, run_pipe, same_processor_objects

PAIRS = {
    "sdxl": (StableDiffusionXLPipeline, PLADISStableDiffusionXLPipeline, TINY_SDXL, "unet", {}),
    "flux": (FluxPipeline, PLADISFluxPipeline, TINY_FLUX_SCHNELL, "transformer", {"max_sequence_length": 16}),
}


@pytest.mark.slow  # per family and direction
@pytest.mark.parametrize("kind", sorted(PAIRS))
@pytest.mark.parametrize("direction", ["stock_to_pladis", "pladis_to_stock"])
def test_shared_denoiser_is_left_as_it_was(kind, direction):
    stock_class, pladis_class, path, attribute, options = PAIRS[kind]
    if direction == "stock_to_pladis":
        stock = stock_class.from_pretrained(path, local_files_only=True)
        pladis = pladis_class.from_pipe(stock)
    else:
        pladis = pladis_class.from_pretrained(path, local_files_only=True)
        stock = stock_class.from_pipe(pladis)
    assert type(pladis) is pladis_class and type(stock) is stock_class
    shared = getattr(stock, attribute)
    assert getattr(pladis, attribute) is shared
    before, stock_image = processors_by_name(shared), run_pipe(stock, **options)
    boosted = run_pipe(pladis, pladis_scale=2.0, **options)
    assert np.abs(boosted - stock_image).max() > 1e-3
    assert same_processor_objects(shared, before)
    np.testing.assert_array_equal(run_pipe(stock, **options), stock_image)
    np.testing.assert_array_equal(run_pipe(pladis, **options), stock_image)  # λ = 0: the stock image


def test_apply_pladis_on_an_image_to_image_pipeline_from_pipe():
    text_to_image = build("sd15")
    image = run_family(text_to_image, "sd15", output_type="pil")[0]
    img2img = StableDiffusionImg2ImgPipeline.from_pipe(text_to_image)
    img2img.set_progress_bar_config(disable=True)
    options = {"image": image, "strength": 0.8, "num_inference_steps": 3, "output_type": "np"}
    stock = img2img("a photo of a red cube", **options).images
    with apply_pladis(img2img, 2.0):
        boosted = img2img("a photo of a red cube", **options).images
    assert np.isfinite(boosted).all() and np.abs(boosted - stock).max() > 1e-3
