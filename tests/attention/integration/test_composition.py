"""The composition matrix (README "Composition"): PLADIS with diffusers' guiders, step caches, attention
backends, group offloading and layerwise casting, each cell on tiny models."""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest
import torch
from diffusers import (
    AdaptiveProjectedGuidance,
    ClassifierFreeGuidance,
    ClassifierFreeZeroStarGuidance,
    PerturbedAttentionGuidance,
    SkipLayerGuidance,
    SmoothedEnergyGuidance,
    StableDiffusionXLPipeline,
)
from diffusers.hooks import (
    FirstBlockCacheConfig,
    HookRegistry,
    LayerSkipConfig,
    MagCacheConfig,
    SmoothedEnergyGuidanceConfig,
    TaylorSeerCacheConfig,
)
from diffusers.hooks.layer_skip import _apply_layer_skip_hook
from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry, attention_backend

import attention.integration.attention_calls
from attention import apply_pladis, pladis_processors, swapped_attn_processors
from pipeline.guider import PLADISGuidance
from scripts.cli.assets import TINY_SDXL
from scripts.dev.build_tiny_assets import build_tiny_flux
from tests.family_runs import one_thread  # noqa: F401
from tests.tiny import CallCounter, processors_by_name, run_pipe, same_processor_objects
from tests.tiny_denoisers import DENOISERS
from tests.tiny_modular import FLUX2_CALL, SDXL_CALL, modular_flux2_klein, modular_sdxl, run_modular

MID = "mid_block.attentions.0.transformer_blocks"  # the tiny SDXL's mid-block transformer blocks
GUIDERS = {
    "CFG": lambda: ClassifierFreeGuidance(guidance_scale=5.0),
    "CFG-Zero*": lambda: ClassifierFreeZeroStarGuidance(guidance_scale=5.0),
    "APG": lambda: AdaptiveProjectedGuidance(guidance_scale=5.0, adaptive_projected_guidance_momentum=-0.5),
    "PAG": lambda: PerturbedAttentionGuidance(
        guidance_scale=5.0,
        perturbed_guidance_scale=3.0,
        perturbed_guidance_start=0.0,
        perturbed_guidance_stop=1.0,
        perturbed_guidance_config=LayerSkipConfig(
            indices=[0], fqn=MID, skip_attention=False, skip_attention_scores=True, skip_ff=False
        ),
    ),
    "skip-layer": lambda: SkipLayerGuidance(
        guidance_scale=5.0,
        skip_layer_guidance_scale=2.0,
        skip_layer_guidance_start=0.0,
        skip_layer_guidance_stop=1.0,
        skip_layer_config=LayerSkipConfig(indices=[0], fqn=MID),
    ),
    "SEG": lambda: SmoothedEnergyGuidance(
        guidance_scale=5.0, seg_guidance_scale=3.0, seg_guidance_config=SmoothedEnergyGuidanceConfig([0], fqn=MID)
    ),
}
WINDOW = {"pladis_start": 0.5, "pladis_stop": 1.0}  # with 2 steps: the second


@pytest.fixture(scope="module")
def sdxl():
    return modular_sdxl()


def guided_runs(pipe, guider: str, options: dict, **pladis) -> dict[str, np.ndarray]:
    """The guider alone, inside `apply_pladis`, and wrapped in `PLADISGuidance` (a fresh guider each run,
    since guiders such as APG keep state across steps); with the denoiser calls each made."""
    runs, calls = {}, {}
    denoiser = pipe.unet if getattr(pipe, "unet", None) is not None else pipe.transformer
    for name in ("alone", "around", "guided"):
        guider_object = GUIDERS[guider]() if name != "guided" else PLADISGuidance(GUIDERS[guider](), **pladis)
        pipe.update_components(guider=guider_object)
        counter = CallCounter(denoiser)
        if name == "around":
            with apply_pladis(pipe, 2.0, **pladis):
                runs[name] = run_modular(pipe, **options)
        else:
            runs[name] = run_modular(pipe, **options)
        counter.remove()
        calls[name] = counter.count
    assert calls["alone"] == calls["around"] == calls["guided"]
    return runs


@pytest.mark.slow  # per guider
@pytest.mark.parametrize("guider", list(GUIDERS))
def test_sdxl_guiders_compose_with_pladis(sdxl, guider):
    """Each guider's batches, hooks and formula with PLADIS on cross-attention in the window's steps: the guider
    wrapped in PLADISGuidance gives the image apply_pladis gives around the guider, and PLADIS changes it. PAG
    and skip-layer perturb self-attention / whole transformer blocks of the mid block, PLADIS stays on attn2."""
    before = processors_by_name(sdxl.unet)
    runs = guided_runs(sdxl, guider, {"steps": 2, **SDXL_CALL}, **WINDOW)
    np.testing.assert_array_equal(runs["guided"], runs["around"])
    assert np.abs(runs["guided"] - runs["alone"]).max() > 1e-4
    assert same_processor_objects(sdxl.unet, before)


@pytest.mark.slow
def test_diffusers_seg_guider_never_perturbs_so_it_gives_cfg_images(sdxl):
    """diffusers 0.42's SmoothedEnergyGuidance never installs its hooks (its prepare_models never counts the
    batch it prepares), so its third pass is the conditional one: with or without PLADIS it gives CFG's image.
    The project's SEG pipeline (PLADISStableDiffusionXLSEGPipeline) does SEG with PLADIS."""
    seg = guided_runs(sdxl, "SEG", {"steps": 2, **SDXL_CALL})
    cfg = guided_runs(sdxl, "CFG", {"steps": 2, **SDXL_CALL})
    for name in ("alone", "guided"):
        np.testing.assert_allclose(seg[name], cfg[name], atol=1e-6)


def test_flux2_skip_layer_guider_composes_with_pladis():
    """A transformer's skip-layer guidance (its first double-stream block skipped in the third pass)."""
    pipe = modular_flux2_klein()
    GUIDERS["skip-layer FLUX.2"] = lambda: SkipLayerGuidance(
        guidance_scale=4.0,
        skip_layer_guidance_scale=2.0,
        skip_layer_guidance_start=0.0,
        skip_layer_guidance_stop=1.0,
        skip_layer_config=LayerSkipConfig(indices=[0], fqn="transformer_blocks"),
    )
    try:
        runs = guided_runs(pipe, "skip-layer FLUX.2", {"steps": 2, **FLUX2_CALL}, **WINDOW)
    finally:
        del GUIDERS["skip-layer FLUX.2"]
    np.testing.assert_array_equal(runs["guided"], runs["around"])
    assert np.abs(runs["guided"] - runs["alone"]).max() > 1e-5


def denoise(model, inputs, output=lambda result: result.sample) -> torch.Tensor:
    with torch.no_grad():
        return output(model(**inputs))


@pytest.mark.parametrize(
    "family,blocks",
    [
        ("qwen-image", "transformer_blocks"),
        ("cogview4", "transformer_blocks"),
        ("hunyuan-image", "transformer_blocks"),
        ("z-image", "layers"),
    ],
)
def test_layers_a_pag_guider_perturbs_run_its_identity_attention_and_pladis_elsewhere(family, blocks, monkeypatch):
    """diffusers' PAG hooks (hooks/layer_skip.py) replace SDPA by the values inside their layers through a
    TorchFunctionMode; on joint attention PLADIS also acts there. In the perturbed pass the hooked layers must
    be exactly the guider's identity attention — as the stock processor under the mode, which is what a PLADIS
    run that leaves block 0 out computes there — and every other layer exactly PLADIS. (These are the joint
    families whose processors diffusers 0.42's layer-skip registry knows.)"""
    denoiser = DENOISERS[family]
    model, inputs = denoiser.build(), denoiser.inputs(0)
    pag = LayerSkipConfig(indices=[0], fqn=blocks, skip_attention=False, skip_attention_scores=True, skip_ff=False)
    others = [f"^{re.escape(name)}$" for name in text_layer_names(model) if not name.startswith(f"{blocks}.0.")]

    def perturbed(**pladis) -> torch.Tensor:
        with apply_pladis(model, 2.0, **pladis):
            _apply_layer_skip_hook(model, copy.deepcopy(pag), name="pag")  # inside the call, as guiders do
            try:
                return denoise(model, inputs, denoiser.output)
            finally:
                HookRegistry.check_if_exists_or_initialize(model).remove_hook("pag", recurse=True)

    with apply_pladis(model, 2.0):
        unperturbed = denoise(model, inputs, denoiser.output)
    ours = perturbed()
    torch.testing.assert_close(ours, perturbed(pladis_layers=others), rtol=0, atol=0)
    assert (ours - unperturbed).abs().max() > 1e-4
    # PLADIS under the mode:
    monkeypatch.setattr(attention.integration.attention_calls, "perturbed_by_layer_skip", lambda: False)
    assert (perturbed() - ours).abs().max() > 1e-4  # would mix the identity into the PLADIS correction


def text_layer_names(model) -> list[str]:
    """The layers PLADIS acts on by default in `model`."""
    from attention.integration.diffusers_families import family_of
    from attention.integration.install import text_attention_layers

    return list(text_attention_layers(model, family_of(model), False))


CACHES = {
    "FirstBlockCache": lambda: FirstBlockCacheConfig(threshold=0.5),
    "TaylorSeerCache": lambda: TaylorSeerCacheConfig(
        cache_interval=2, disable_cache_before_step=1, taylor_factors_dtype=torch.float32
    ),
    "MagCache": lambda: MagCacheConfig(threshold=0.5, num_inference_steps=6, retention_ratio=0.2, mag_ratios=[1.0] * 6),
}
FLUX_CALL = {"max_sequence_length": 16, "guidance_scale": 0.0, "num_inference_steps": 6}


@pytest.fixture(scope="module")
def flux():
    pipe = build_tiny_flux(guidance_embeds=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.slow  # per cache
@pytest.mark.parametrize("cache", list(CACHES))
def test_step_caches_run_pladis_at_constant_scale_and_refuse_windows(flux, cache):
    """A constant λ: the steps the cache computes run PLADIS — the same image as hand-made fixed-λ processors
    under the same cache — and λ = 0 is the cached stock image. A window would switch PLADIS on or off inside
    the cached run, so it is refused, naming the cache."""
    uncached = run_pipe(flux, **FLUX_CALL)
    flux.transformer.enable_cache(CACHES[cache]())
    try:
        stock = run_pipe(flux, **FLUX_CALL)
        with apply_pladis(flux, 0.0):
            np.testing.assert_array_equal(run_pipe(flux, **FLUX_CALL), stock)
        with apply_pladis(flux, 2.0):
            boosted = run_pipe(flux, **FLUX_CALL)
        with swapped_attn_processors(flux.transformer, pladis_processors(flux.transformer, 2.0, 1.5)):
            np.testing.assert_array_equal(run_pipe(flux, **FLUX_CALL), boosted)
        with pytest.raises(ValueError, match=f"pladis_start/pladis_stop with a step cache .*{cache}"):
            with apply_pladis(flux, 2.0, pladis_stop=0.5):
                pytest.fail("the body must not run")
    finally:
        flux.transformer.disable_cache()
    assert np.abs(stock - uncached).max() > 1e-5  # the cache did skip work
    assert np.abs(boosted - stock).max() > 1e-4


@pytest.fixture
def counted_backend(monkeypatch):
    """Calls of diffusers' `_native_math` attention backend, counted. (`set_attention_backend` also sets diffusers'
    process-wide active backend, which `reset_attention_backend` leaves: put back after the test.)"""
    backend = AttentionBackendName._NATIVE_MATH
    original, calls = _AttentionBackendRegistry._backends[backend], []
    monkeypatch.setattr(_AttentionBackendRegistry, "_active_backend", _AttentionBackendRegistry._active_backend)

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setitem(_AttentionBackendRegistry._backends, backend, counting)
    return calls


@pytest.mark.parametrize("how", ["set_attention_backend", "attention_backend()"])
def test_attention_backends_stay_on_the_layers_pladis_leaves(flux, counted_backend, how):
    """FLUX's 2 double-stream blocks run PLADIS, its 2 single-stream blocks keep the chosen backend."""
    options = {**FLUX_CALL, "num_inference_steps": 2}
    if how == "set_attention_backend":
        flux.transformer.set_attention_backend("_native_math")
    try:
        with attention_backend("_native_math") if how != "set_attention_backend" else torch.no_grad():
            stock = run_pipe(flux, **options)
            stock_calls = len(counted_backend)
            with apply_pladis(flux, 2.0):
                boosted = run_pipe(flux, **options)
    finally:
        flux.transformer.reset_attention_backend()
    assert stock_calls == 4 * 2  # 4 attention layers, 2 steps
    assert len(counted_backend) - stock_calls == 2 * 2  # only the single-stream blocks
    assert np.abs(boosted - stock).max() > 1e-4


@pytest.fixture
def sdxl_classic():
    pipe = StableDiffusionXLPipeline.from_pretrained(TINY_SDXL, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.slow
@pytest.mark.parametrize("offload_type", ["block_level", "leaf_level"])
def test_group_offloading_gives_the_pladis_image(sdxl_classic, offload_type):
    with apply_pladis(sdxl_classic, 2.0):
        expected = run_pipe(sdxl_classic)
    cpu = torch.device("cpu")
    options = {"num_blocks_per_group": 1} if offload_type == "block_level" else {}
    sdxl_classic.unet.enable_group_offload(cpu, offload_device=cpu, offload_type=offload_type, **options)
    before = processors_by_name(sdxl_classic.unet)
    with apply_pladis(sdxl_classic, 2.0):
        offloaded = run_pipe(sdxl_classic)
    np.testing.assert_array_equal(offloaded, expected)
    assert same_processor_objects(sdxl_classic.unet, before)


@pytest.mark.slow
def test_layerwise_casting_to_fp8_is_pladis_on_the_fp8_weights(sdxl_classic):
    """Weights stored in float8_e4m3fn, computed in float32: the PLADIS image equals PLADIS on a float32 copy
    whose cast layers hold the fp8-rounded weights; λ = 0 is the cast stock image; storage stays fp8."""
    reference = copy.deepcopy(sdxl_classic)
    unet = sdxl_classic.unet
    unet.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)
    cast = [
        name
        for name, module in unet.named_modules()
        if "layerwise_casting" in getattr(getattr(module, "_diffusers_hook", None), "hooks", {})
    ]
    assert cast
    with torch.no_grad():
        for name in cast:
            for parameter in reference.unet.get_submodule(name).parameters(recurse=False):
                parameter.copy_(parameter.to(torch.float8_e4m3fn).to(torch.float32))
    stock = run_pipe(sdxl_classic)
    with apply_pladis(sdxl_classic, 0.0):
        np.testing.assert_array_equal(run_pipe(sdxl_classic), stock)
    with apply_pladis(sdxl_classic, 2.0):
        boosted = run_pipe(sdxl_classic)
    with apply_pladis(reference, 2.0):
        np.testing.assert_allclose(boosted, run_pipe(reference), atol=1e-5)
    assert np.abs(boosted - stock).max() > 1e-3
    assert all(unet.get_submodule(name).weight.dtype == torch.float8_e4m3fn for name in cast if "attn2.to_" in name)
