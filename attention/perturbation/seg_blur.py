"""The Gaussian blur of Smoothed Energy Guidance (SEG), on token sequences laid out on an image grid.

SEG smooths the self-attention energy landscape by blurring the query over the token grid; this
module holds that math on plain tensors (no diffusers objects), for any height × width grid.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# SEG's "infinite blur" threshold lives in `seg_sigma` (no torch there, so the scripts' options can name it
# without loading torch).
from .seg_sigma import INFINITE_BLUR_SIGMA


def seg_kernel_size(sigma: float) -> int:
    """SEG's kernel size for `sigma`: ceil(6σ) + 1, made odd (ceil(6σ) + 1 − ceil(6σ) mod 2)."""
    six_sigma = math.ceil(6.0 * sigma)
    return six_sigma + 1 - six_sigma % 2


def clipped_kernel_size(kernel_size: int, length: int) -> int:
    """The largest odd size ≤ `kernel_size` whose half-width reflect padding fits in `length` tokens.

    Reflect padding needs `kernel_size // 2 < length`: SEG's rule `min(k, n − (n mod 2 − 1))`.
    """
    return min(kernel_size, length - (length % 2 - 1))


def gaussian_kernel_1d(
    kernel_size: int, sigma: float, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> torch.Tensor:
    """A normalised Gaussian of `kernel_size` taps (odd) centred on the middle tap, built on `device`
    in float32 (no host-to-device copy per call), then cast to `dtype`."""
    half = (kernel_size - 1) / 2
    offsets = torch.arange(kernel_size, dtype=torch.float32, device=device).sub_(half).div_(sigma)
    weights = offsets.square_().mul_(-0.5).exp_()
    return weights.div_(weights.sum()).to(dtype)


def _blur_along(grid: torch.Tensor, dim: int, sigma: float) -> torch.Tensor:
    """Blur a (batch, channels, height, width) grid along `dim` (2 or 3) with reflect padding."""
    length = grid.shape[dim]
    kernel_size = clipped_kernel_size(seg_kernel_size(sigma), length)
    if kernel_size <= 1:
        return grid
    channels = grid.shape[1]
    kernel = gaussian_kernel_1d(kernel_size, sigma, grid.dtype, grid.device)
    half = kernel_size // 2
    if dim == 2:
        weight = kernel.view(1, 1, kernel_size, 1).expand(channels, 1, kernel_size, 1)
        padded = F.pad(grid, (0, 0, half, half), mode="reflect")
    else:
        weight = kernel.view(1, 1, 1, kernel_size).expand(channels, 1, 1, kernel_size)
        padded = F.pad(grid, (half, half, 0, 0), mode="reflect")
    return F.conv2d(padded, weight, groups=channels)


def gaussian_blur_tokens(tokens: torch.Tensor, height: int, width: int, sigma: float) -> torch.Tensor:
    """Blur (batch, height·width, channels) tokens, row-major on a height × width grid, per channel.

    Separable Gaussian (SEG's kernel size, clipped per axis to the grid, reflect padding), computed
    in float32 and returned in `tokens`' dtype. σ > `INFINITE_BLUR_SIGMA` gives the mean over tokens.
    """
    batch, num_tokens, channels = tokens.shape
    if num_tokens != height * width:
        raise ValueError(f"{num_tokens} tokens do not fill a {height}x{width} grid")
    if not sigma > 0:
        raise ValueError(f"blur sigma must be > 0, got {sigma!r}")
    work = tokens.float()
    if sigma > INFINITE_BLUR_SIGMA:
        return work.mean(dim=1, keepdim=True).repeat(1, num_tokens, 1).to(tokens.dtype)
    grid = work.transpose(1, 2).reshape(batch, channels, height, width)
    grid = _blur_along(_blur_along(grid, 2, sigma), 3, sigma)
    return grid.reshape(batch, channels, num_tokens).transpose(1, 2).to(tokens.dtype)
