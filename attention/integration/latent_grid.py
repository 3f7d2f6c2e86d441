"""The latent's spatial size during a U-Net call, and the token grid of each depth: what lays a layer's tokens out as
an image (SEG's blur, the attention maps), for any height × width (no square assumption)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch


@dataclass
class LatentSize:
    """Spatial size of the latent the U-Net is currently denoising (None before its first call)."""

    height: int | None = None
    width: int | None = None

    def record_call(self, args: tuple, kwargs: dict) -> None:
        """Take the size of the latent (`sample`) a U-Net call was given (a forward pre-hook's arguments)."""
        sample = kwargs["sample"] if "sample" in kwargs else args[0]
        self.height, self.width = (int(n) for n in sample.shape[-2:])


@contextmanager
def recording_latent_size(model: torch.nn.Module) -> Iterator[LatentSize]:
    """Yield a `LatentSize` that a forward pre-hook on `model` updates at every call; the hook is
    removed on exit, also when the body raises."""
    size = LatentSize()

    def record(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        size.record_call(args, kwargs)

    handle = model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        yield size
    finally:
        handle.remove()


def token_grid(num_tokens: int, latent_height: int, latent_width: int) -> tuple[int, int]:
    """The (height, width) grid of `num_tokens` tokens at some U-Net depth, for a latent of the given size.

    Each U-Net downsampling (stride-2 convolution, padding 1) maps n to ceil(n / 2), so the grid is
    the first halving of the latent size with that many tokens; no square assumption.
    """
    height, width = latent_height, latent_width
    while height * width > num_tokens and (height > 1 or width > 1):
        height, width = -(-height // 2), -(-width // 2)
    if height * width != num_tokens:
        raise ValueError(f"{num_tokens} tokens match no downsampling of the {latent_height}x{latent_width} latent grid")
    return height, width
