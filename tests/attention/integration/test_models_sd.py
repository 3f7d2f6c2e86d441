"""`apply_pladis` on Stable Diffusion 1.5 and 2.x (`StableDiffusionPipeline`, `UNet2DConditionModel`):
identity at λ = 0, PLADIS on exactly the `attn2` layers, unchanged U-Net calls, restoration."""

from __future__ import annotations

import numpy as np
import pytest
from diffusers.models.attention_processor import AttnProcessor2_0

from attention import PLADISAttnProcessor, apply_pladis
from tests.family_runs import build, layers_of_type, one_thread, processors_seen, run_family  # noqa: F401
from tests.tiny import CallCounter, processors_by_name, same_processor_objects


@pytest.fixture(scope="module", params=["sd15", "sd2"])
def family(request):
    return request.param


@pytest.fixture(scope="module")
def pipe(family):
    return build(family)


def test_scale_zero_is_bit_identical_to_the_stock_pipeline(pipe, family):
    stock = run_family(pipe, family)
    with apply_pladis(pipe, 0.0, 2.0):
        np.testing.assert_array_equal(run_family(pipe, family), stock)


@pytest.mark.slow
@pytest.mark.parametrize("alpha", [1.5, 2.0])
def test_positive_scale_changes_the_image(pipe, family, alpha):
    stock = run_family(pipe, family)
    with apply_pladis(pipe, 2.0, alpha):
        boosted = run_family(pipe, family)
    assert np.isfinite(boosted).all() and np.abs(boosted - stock).max() > 1e-3


def test_pladis_goes_on_every_cross_attention_layer_only(pipe, family):
    with apply_pladis(pipe, 2.0), processors_seen(pipe.unet) as seen:
        run_family(pipe, family)
    cross = {name for name in (key[: -len(".processor")] for key in seen) if name.endswith(".attn2")}
    assert len(cross) == 4  # 1 down, 1 mid, 2 up transformer blocks
    assert layers_of_type(seen, PLADISAttnProcessor) == cross
    assert layers_of_type(seen, AttnProcessor2_0) == {key[: -len(".processor")] for key in seen} - cross


def test_unet_calls_unchanged_and_processors_restored(pipe, family):
    before = processors_by_name(pipe.unet)
    counter = CallCounter(pipe.unet)
    run_family(pipe, family, num_inference_steps=3)
    with apply_pladis(pipe, 2.0):
        run_family(pipe, family, num_inference_steps=3)
    counter.remove()
    assert counter.count == 2 * 3  # CFG batches [uncond, cond] in one call per step
    assert same_processor_objects(pipe.unet, before)


def test_variants_are_shaped_like_sd15_and_sd2(pipe, family):
    expected = "v_prediction" if family == "sd2" else "epsilon"
    assert pipe.scheduler.config.prediction_type == expected
    assert pipe.unet.config.use_linear_projection is (family == "sd2")
