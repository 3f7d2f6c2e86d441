"""Independent references for the guidance tests: SEG's blur written out in numpy, SEG run on diffusers'
stock PAG pipelines by perturbing `to_q` outputs with forward hooks (no project code involved), and a
latent-output runner (exact comparisons without the VAE's clipping, and faster)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from tests.tiny import run_pipe


def reference_blur(tokens: np.ndarray, height: int, width: int, sigma: float) -> np.ndarray:
    """SEG's blur of (batch, height·width, channels) tokens written out directly: one 2-D Gaussian
    (outer product of per-axis kernels, each SEG-sized and clipped so its half-width stays inside the
    grid), summed over reflected positions; σ > 9999 gives the token mean."""
    grid = tokens.reshape(tokens.shape[0], height, width, tokens.shape[-1]).astype(np.float64)
    if sigma > 9999:
        return np.broadcast_to(grid.mean(axis=(1, 2), keepdims=True), grid.shape).reshape(tokens.shape).copy()

    def taps(length: int) -> np.ndarray:
        size = math.ceil(6 * sigma)
        size = size + 1 if size % 2 == 0 else size  # made odd
        size = min(size, length if length % 2 else length + 1)
        offsets = np.arange(size) - size // 2
        weights = np.exp(-0.5 * (offsets / sigma) ** 2)
        return weights / weights.sum()

    def reflected(positions: np.ndarray, length: int) -> np.ndarray:
        positions = np.abs(positions)
        return np.where(positions >= length, 2 * (length - 1) - positions, positions)

    k_h, k_w = taps(height), taps(width)
    kernel = np.outer(k_h, k_w)
    rows, cols = np.arange(height), np.arange(width)
    out = np.zeros_like(grid)
    for a, da in enumerate(range(-(len(k_h) // 2), len(k_h) // 2 + 1)):
        for b, db in enumerate(range(-(len(k_w) // 2), len(k_w) // 2 + 1)):
            shifted = grid[:, reflected(rows + da, height)][:, :, reflected(cols + db, width)]
            out += kernel[a, b] * shifted
    return out.reshape(tokens.shape)


def run_latents(pipe, **kwargs) -> np.ndarray:
    """`tests.tiny.run_pipe` returning the final latents (no VAE decode) as numpy."""
    return run_pipe(pipe, output_type="latent", **kwargs).float().numpy()


def self_attention_names(unet: torch.nn.Module, prefix: str) -> list[str]:
    """Names of the `attn1` modules under `prefix` (e.g. "mid_block.", "down_blocks.1.")."""
    return [name for name, _ in unet.named_modules() if name.startswith(prefix) and name.endswith(".attn1")]


@contextmanager
def perturbed_projection(
    unet: torch.nn.Module,
    grids: dict[str, tuple[int, int]],
    sigma: float,
    batch_chunks: int,
    projection: str = "to_q",
    rows: str = "perturbed",
) -> Iterator[None]:
    """Blur the `projection` output of the given `attn1` layers (name → token grid) with `reference_blur`.

    `rows="perturbed"` touches the last of `batch_chunks` chunks (SEG); `rows="all"` the whole batch
    and `projection="to_k"` the keys: the wrong variants a test must tell apart.
    """
    handles = []
    for name, (height, width) in grids.items():

        def hook(module, args, output, height=height, width=width):
            first = 0 if rows == "all" else output.shape[0] - output.shape[0] // batch_chunks
            changed = output.clone()
            blurred = reference_blur(output[first:].detach().double().numpy(), height, width, sigma)
            changed[first:] = torch.from_numpy(blurred).to(output.dtype)
            return changed

        handles.append(getattr(unet.get_submodule(name), projection).register_forward_hook(hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def stock_pag_as_plain_attention(pipe, layer_names: list[str]) -> Iterator[None]:
    """Make a stock diffusers PAG pipeline run its perturbed chunk through ordinary attention on
    exactly `layer_names` (so hooks define the perturbation); its own settings are put back after."""
    saved = (pipe.pag_applied_layers, pipe._pag_attn_processors)
    exact = [f"^{name.replace('.', '[.]')}$" for name in layer_names]
    pipe.set_pag_applied_layers(exact, pag_attn_processors=(AttnProcessor2_0(), AttnProcessor2_0()))
    try:
        yield
    finally:
        pipe.pag_applied_layers, pipe._pag_attn_processors = saved
