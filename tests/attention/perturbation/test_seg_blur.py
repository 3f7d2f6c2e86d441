"""SEG's query blur on plain tensors equals an independent numpy formulation (full 2-D kernel, explicit
reflect padding) on square and non-square grids, including kernels clipped to the grid."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from attention.perturbation.seg_blur import gaussian_blur_tokens, seg_kernel_size
from tests.guidance_reference import reference_blur


@pytest.mark.parametrize("sigma,expected", [(0.1, 1), (0.5, 3), (1.0, 7), (1.25, 9), (2.0, 13), (100.0, 601)])
def test_kernel_size_is_ceil_six_sigma_plus_one_made_odd(sigma, expected):
    assert seg_kernel_size(sigma) == expected


@pytest.mark.parametrize(
    "height,width,sigma",
    [
        (6, 6, 0.8),  # square, kernel 5 fits
        (4, 6, 2.0),  # kernel 13 clipped to 5 rows and 7 columns
        (3, 8, 1.0),  # kernel 7 clipped to 3 rows only
        (7, 5, 0.5),  # odd sizes, kernel 3
        (1, 6, 3.0),  # a single row: no blur across rows
    ],
)
def test_blur_matches_independent_2d_formulation(height, width, sigma):
    tokens = torch.randn(2, height * width, 5, generator=torch.Generator().manual_seed(height * 10 + width))
    blurred = gaussian_blur_tokens(tokens, height, width, sigma)
    np.testing.assert_allclose(blurred.numpy(), reference_blur(tokens.numpy(), height, width, sigma), atol=1e-6)


def test_non_square_grid_is_not_read_transposed():
    tokens = torch.randn(1, 4 * 9, 3, generator=torch.Generator().manual_seed(1))
    right = gaussian_blur_tokens(tokens, 4, 9, 1.0)
    assert (right - gaussian_blur_tokens(tokens, 9, 4, 1.0)).abs().max() > 1e-2


@pytest.mark.parametrize("sigma", [1e4, 9999999.0, math.inf])
def test_infinite_sigma_gives_the_token_mean(sigma):
    tokens = torch.randn(3, 5 * 7, 4, generator=torch.Generator().manual_seed(2))
    blurred = gaussian_blur_tokens(tokens, 5, 7, sigma)
    torch.testing.assert_close(blurred, tokens.mean(dim=1, keepdim=True).expand_as(tokens), rtol=0, atol=1e-6)


def test_tiny_sigma_is_the_identity_and_dtype_is_kept():
    tokens = torch.randn(1, 16, 4, generator=torch.Generator().manual_seed(3)).half()
    blurred = gaussian_blur_tokens(tokens, 4, 4, 0.1)
    assert blurred.dtype == torch.float16 and torch.equal(blurred, tokens)


def test_blur_keeps_constant_tokens_and_channels_separate():
    constant = torch.full((1, 12, 2), 3.0)
    torch.testing.assert_close(gaussian_blur_tokens(constant, 3, 4, 1.5), constant)
    tokens = torch.zeros(1, 12, 2)
    tokens[0, 5, 0] = 1.0  # an impulse in channel 0 only
    blurred = gaussian_blur_tokens(tokens, 3, 4, 1.0)
    assert blurred[..., 1].abs().max() == 0 and blurred[..., 0].sum().item() > 0.5


def test_blur_rejects_a_mismatched_grid():
    with pytest.raises(ValueError, match="3x5"):
        gaussian_blur_tokens(torch.zeros(1, 16, 2), 3, 5, 1.0)


def test_blur_builds_its_gaussian_on_the_input_device_with_no_host_copy():
    """Every op of a finite-σ blur runs on the tokens' device (here `meta`): no CPU-built kernel is
    copied over on each call (on a GPU such a copy is a stream sync)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    devices = set()

    class OutputDevices(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            result = func(*args, **(kwargs or {}))
            for tensor in result if isinstance(result, (tuple, list)) else (result,):
                if isinstance(tensor, torch.Tensor):
                    devices.add(tensor.device.type)
            return result

    tokens = torch.empty(2, 64, 8, device="meta", dtype=torch.float16)
    with OutputDevices():
        blurred = gaussian_blur_tokens(tokens, 8, 8, sigma=1.5)
    assert blurred.device.type == "meta" and blurred.dtype == torch.float16
    assert devices == {"meta"}
