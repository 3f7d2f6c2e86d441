"""The tiny SDXL and FLUX pipelines on `PLADIS_TEST_DEVICE` with every kernel: each gives the CPU
path's image (Triton through its interpreter on CPU, compiled on CUDA), λ = 0 stays the stock image
bit for bit, and the number of denoiser calls never changes. Images compared with CPU ones are made
with TF32 off (cuDNN convolutions default to TF32 on CUDA: ~1e-3 off the CPU image, PLADIS or not)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from diffusers import FluxPipeline, StableDiffusionXLPipeline

from pipeline.pipeline_flux_pladis import PLADISFluxPipeline
from pipeline.pipeline_sdxl import PLADISStableDiffusionXLPipeline
from scripts.cli.assets import TINY_FLUX_DEV, TINY_SDXL
from tests.tiny import CallCounter, run_pipe

pytestmark = pytest.mark.slow  # the device checks on the CPU: the Triton interpreter over whole pipelines

FAMILIES = {
    "sdxl": (PLADISStableDiffusionXLPipeline, StableDiffusionXLPipeline, TINY_SDXL, {}),
    "flux": (PLADISFluxPipeline, FluxPipeline, TINY_FLUX_DEV, {"max_sequence_length": 32}),
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request):
    ours, stock, path, options = FAMILIES[request.param]
    pipe = ours.from_pretrained(path, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe, stock, options


@pytest.fixture(scope="module")
def cpu_images(family):
    """The CPU path's PLADIS image (the kernels are checked against it) and the stock image."""
    pipe, _, options = family
    pipe.to("cpu")
    return run_pipe(pipe, pladis_scale=2.0, **options), run_pipe(pipe, **options)


@contextlib.contextmanager
def full_float32() -> Iterator[None]:
    """float32 convolutions and matmuls without TF32, as on a CPU."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.parametrize("kernel", ["torch", "triton"])
def test_every_kernel_gives_the_cpu_image_on_the_device(family, cpu_images, kernel, device, monkeypatch):
    pipe, _, options = family
    pipe.to(device)
    monkeypatch.setenv("PLADIS_KERNEL", kernel)
    counter = CallCounter(pipe.unet if hasattr(pipe, "unet") else pipe.transformer)
    try:
        with full_float32():
            image = run_pipe(pipe, pladis_scale=2.0, **options)
    finally:
        counter.remove()
        pipe.to("cpu")
    pladis, stock = cpu_images
    assert counter.count == 2  # one denoiser call per step, as without PLADIS
    np.testing.assert_allclose(image, pladis, atol=2e-4)
    assert np.abs(image - stock).max() > 1e-3


def test_scale_zero_is_the_stock_image_on_the_device(family, device):
    pipe, stock_class, options = family
    stock = stock_class.from_pipe(pipe)
    pipe.to(device)
    try:
        np.testing.assert_array_equal(run_pipe(pipe, pladis_scale=0.0, **options), run_pipe(stock, **options))
    finally:
        pipe.to("cpu")
