"""`PLADISGuidance` (pipeline/guider.py) in modular pipelines: any diffusers guider with PLADIS on the denoiser
calls of the steps inside its window — the same image as `apply_pladis` around the same modular call (whose
step comes from the scheduler instead of the guider), its configuration saved and loaded, and the denoiser
left as it started after every run, also when it raises."""

from __future__ import annotations

import numpy as np
import pytest
from diffusers import AdaptiveProjectedGuidance, ClassifierFreeGuidance

from attention import apply_pladis
from pipeline.guider import PLADISGuidance
from tests.family_runs import one_thread  # noqa: F401
from tests.tiny import CallCounter, processors_by_name, same_processor_objects
from tests.tiny_modular import FLUX2_CALL, SDXL_CALL, modular_flux2_klein, modular_sdxl, run_modular


@pytest.fixture(scope="module")
def sdxl():
    return modular_sdxl()


def with_guider(pipe, guider):
    pipe.update_components(guider=guider)
    return pipe


@pytest.mark.slow  # per window and layers
@pytest.mark.parametrize(
    "window,layers", [((0.0, 1.0), None), ((0.25, 0.75), None), ((0.5, 1.0), ["mid", "up_blocks.0.attentions.1"])]
)
def test_sdxl_guider_equals_apply_pladis_around_the_same_modular_call(sdxl, window, layers):
    start, stop = window
    pladis = {"pladis_start": start, "pladis_stop": stop, "pladis_layers": layers}
    stock = run_modular(with_guider(sdxl, ClassifierFreeGuidance(guidance_scale=5.0)), **SDXL_CALL)
    with apply_pladis(sdxl, 2.0, **pladis):
        around = run_modular(sdxl, **SDXL_CALL)
    before, hooks = processors_by_name(sdxl.unet), dict(sdxl.unet._forward_pre_hooks)
    counter = CallCounter(sdxl.unet)
    guided = run_modular(
        with_guider(sdxl, PLADISGuidance(ClassifierFreeGuidance(guidance_scale=5.0), pladis_scale=2.0, **pladis)),
        **SDXL_CALL,
    )
    counter.remove()
    np.testing.assert_array_equal(guided, around)
    assert np.abs(guided - stock).max() > 1e-5  # PLADIS acted (little on late steps of two layers)
    assert counter.count == 2 * 4  # CFG's two denoiser calls per step, as without PLADIS
    assert same_processor_objects(sdxl.unet, before) and dict(sdxl.unet._forward_pre_hooks) == hooks


def test_guider_at_scale_zero_is_the_wrapped_guider_bit_for_bit(sdxl):
    stock = run_modular(with_guider(sdxl, AdaptiveProjectedGuidance(guidance_scale=5.0)), **SDXL_CALL)
    wrapped = PLADISGuidance(AdaptiveProjectedGuidance(guidance_scale=5.0), pladis_scale=0.0)
    np.testing.assert_array_equal(run_modular(with_guider(sdxl, wrapped), **SDXL_CALL), stock)


@pytest.mark.slow
def test_guider_configuration_is_saved_and_loaded_with_the_wrapped_guider(sdxl, tmp_path):
    guider = PLADISGuidance(
        AdaptiveProjectedGuidance(guidance_scale=4.0, eta=0.5),
        pladis_scale=1.5,
        pladis_alpha=2.0,
        pladis_start=0.25,
        pladis_stop=0.75,
        pladis_layers="mid",
    )
    guider.save_pretrained(tmp_path)
    loaded = PLADISGuidance.from_pretrained(tmp_path)
    assert type(loaded.guider) is AdaptiveProjectedGuidance
    assert (loaded.guider.guidance_scale, loaded.guider.eta) == (4.0, 0.5)
    assert loaded.settings == guider.settings
    assert loaded.new().settings == guider.settings
    np.testing.assert_array_equal(
        run_modular(with_guider(sdxl, loaded), **SDXL_CALL), run_modular(with_guider(sdxl, guider), **SDXL_CALL)
    )


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"pladis_start": 0.8, "pladis_stop": 0.2}, ValueError, "pladis_start=0.8, pladis_stop=0.2"),
        ({"pladis_scale": -1.0}, ValueError, "pladis_scale"),
        ({"guider": "cfg"}, TypeError, "guider must be a diffusers guider"),
        ({"guider": {"_class_name": "UNet2DConditionModel"}}, ValueError, "not a diffusers guider class"),
    ],
)
def test_bad_guider_arguments_are_refused_naming_them(kwargs, error, match):
    with pytest.raises(error, match=match):
        PLADISGuidance(**kwargs)


def test_a_denoiser_that_raises_inside_the_window_gets_its_processors_back(sdxl):
    before, hooks = processors_by_name(sdxl.unet), dict(sdxl.unet._forward_pre_hooks)
    forward_hooks = dict(sdxl.unet._forward_hooks)

    def fail(module, args, kwargs):
        raise KeyError("inside the denoiser")

    handle = sdxl.unet.register_forward_pre_hook(fail, with_kwargs=True)
    try:
        with pytest.raises(KeyError, match="inside the denoiser"):
            run_modular(with_guider(sdxl, PLADISGuidance(ClassifierFreeGuidance(guidance_scale=5.0))), **SDXL_CALL)
    finally:
        handle.remove()
    assert same_processor_objects(sdxl.unet, before)
    assert dict(sdxl.unet._forward_pre_hooks) == hooks and dict(sdxl.unet._forward_hooks) == forward_hooks
    # and PLADIS is not left on in this thread: a plain call is the stock image
    stock = run_modular(with_guider(sdxl, ClassifierFreeGuidance(guidance_scale=5.0)), **SDXL_CALL)
    with apply_pladis(sdxl, 0.0):
        np.testing.assert_array_equal(run_modular(sdxl, **SDXL_CALL), stock)


def test_flux2_klein_modular_guider_equals_apply_pladis_around():
    """A modular transformer pipeline (FLUX.2 [klein] base, CFG through its guider): window and layer ids."""
    pipe = modular_flux2_klein()
    options = {"steps": 3, **FLUX2_CALL}
    pladis = {"pladis_stop": 0.5, "pladis_layers": "single_transformer_blocks"}
    stock = run_modular(pipe, **options)
    with apply_pladis(pipe, 2.0, **pladis):
        around = run_modular(pipe, **options)
    guided = run_modular(
        with_guider(pipe, PLADISGuidance(ClassifierFreeGuidance(guidance_scale=5.0), **pladis)), **options
    )
    np.testing.assert_array_equal(guided, around)
    assert np.abs(guided - stock).max() > 1e-5
