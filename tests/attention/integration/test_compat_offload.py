"""PLADIS with accelerate's offload hooks: `enable_model_cpu_offload` runs on this CPU (device="cpu") and
gives the non-offloaded PLADIS image; `enable_sequential_cpu_offload` (weights on the meta device until each
submodule runs) installs and restores PLADIS around its hooks, and runs where an accelerator exists."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLPipeline

from attention import PLADISAttnProcessor, apply_pladis
from scripts.cli.assets import TINY_SDXL
from tests.family_runs import one_thread  # noqa: F401
from tests.tiny import CallCounter, processors_by_name, run_pipe, same_processor_objects

MID_CROSS_ATTENTION = "mid_block.attentions.0.transformer_blocks.0.attn2.processor"


def load() -> StableDiffusionXLPipeline:
    pipe = StableDiffusionXLPipeline.from_pretrained(TINY_SDXL, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def reference():
    """(stock, PLADIS) images of the tiny SDXL without offloading."""
    pipe = load()
    stock = run_pipe(pipe)
    with apply_pladis(pipe, 2.0):
        return stock, run_pipe(pipe)


@pytest.mark.slow
def test_model_cpu_offload_runs_pladis(reference):
    stock, pladis = reference
    pipe = load()
    pipe.enable_model_cpu_offload(device="cpu")
    assert hasattr(pipe.unet, "_hf_hook")
    before = processors_by_name(pipe.unet)
    counter = CallCounter(pipe.unet)
    with apply_pladis(pipe, 2.0):
        offloaded = run_pipe(pipe)
    counter.remove()
    assert counter.count == 2
    np.testing.assert_allclose(offloaded, pladis, atol=1e-5)  # the hooks only move weights
    assert np.abs(offloaded - stock).max() > 1e-3
    assert same_processor_objects(pipe.unet, before) and hasattr(pipe.unet, "_hf_hook")
    np.testing.assert_allclose(run_pipe(pipe), stock, atol=1e-5)


def test_sequential_cpu_offload_installs_and_restores_around_the_hooks():
    pipe = load()
    pipe.enable_sequential_cpu_offload(device="cpu")
    layer = pipe.unet.mid_block.attentions[0].transformer_blocks[0].attn2
    assert layer.to_q.weight.device.type == "meta" and hasattr(layer.to_q, "_hf_hook")
    before = processors_by_name(pipe.unet)
    with apply_pladis(pipe, 2.0):
        assert isinstance(pipe.unet.attn_processors[MID_CROSS_ATTENTION], PLADISAttnProcessor)
        assert hasattr(layer.to_q, "_hf_hook")  # PLADIS calls the projections, so their hooks still load weights
    assert same_processor_objects(pipe.unet, before) and hasattr(layer.to_q, "_hf_hook")


@pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="sequential offload to the CPU itself fails in "
    "accelerate's meta-device hook even for the stock pipeline; it needs an accelerator",
)
@pytest.mark.parametrize("offload", ["enable_model_cpu_offload", "enable_sequential_cpu_offload"])
def test_offload_to_cuda_runs_pladis(offload):
    pipe = load()
    getattr(pipe, offload)()
    stock = run_pipe(pipe)
    with apply_pladis(pipe, 2.0):
        boosted = run_pipe(pipe)
    assert np.isfinite(boosted).all() and np.abs(boosted - stock).max() > 1e-3
