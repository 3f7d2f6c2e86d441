"""Smoothed Energy Guidance's perturbed self-attention processor, and the latent-size recorder it needs.

The processor is diffusers' `AttnProcessor2_0` except that the perturbed batch chunk's query is
Gaussian-blurred over its token grid; the grid is derived from the latent size recorded at each
U-Net call and the layer's token count, so non-square images work.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention

from .seg_blur import gaussian_blur_tokens, token_grid
from .validation import check_seg_blur_sigma


@dataclass
class LatentSize:
    """Spatial size of the latent the U-Net is currently denoising (None before its first call)."""

    height: int | None = None
    width: int | None = None


@contextmanager
def recording_latent_size(model: torch.nn.Module) -> Iterator[LatentSize]:
    """Yield a `LatentSize` that a forward pre-hook on `model` updates at every call; the hook is
    removed on exit, also when the body raises."""
    size = LatentSize()

    def record(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        sample = kwargs["sample"] if "sample" in kwargs else args[0]
        size.height, size.width = (int(n) for n in sample.shape[-2:])

    handle = model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        yield size
    finally:
        handle.remove()


class SmoothedEnergyAttnProcessor:
    """Self-attention whose perturbed batch chunk attends with a Gaussian-blurred query (SEG).

    The batch is `batch_chunks` equal chunks, the perturbed one last: `[uncond, cond, perturbed]`
    with CFG (`batch_chunks=3`), `[cond, perturbed]` without (`batch_chunks=2`). Keys, values and
    the other chunks are untouched. σ > 9999 replaces the perturbed query by its mean over tokens.
    """

    def __init__(self, blur_sigma: float, latent_size: LatentSize, batch_chunks: int) -> None:
        if batch_chunks not in (2, 3):
            raise ValueError(f"batch_chunks must be 2 (no CFG) or 3 (CFG), got {batch_chunks!r}")
        self.blur_sigma = check_seg_blur_sigma(blur_sigma)
        self.latent_size = latent_size
        self.batch_chunks = batch_chunks

    def __repr__(self) -> str:
        return f"{type(self).__name__}(blur_sigma={self.blur_sigma}, batch_chunks={self.batch_chunks})"

    def _grid(self, num_tokens: int) -> tuple[int, int]:
        if self.latent_size.height is None:
            raise RuntimeError(
                "SmoothedEnergyAttnProcessor does not know the latent size: run the U-Net inside "
                "`recording_latent_size(unet)` (the PLADIS SEG pipelines do)"
            )
        return token_grid(num_tokens, self.latent_size.height, self.latent_size.width)

    def blur_perturbed_query(self, query: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """`query` (batch, tokens, channels) with only its last batch chunk blurred over the grid."""
        perturbed_rows = query.shape[0] // self.batch_chunks
        if perturbed_rows * self.batch_chunks != query.shape[0]:
            raise ValueError(f"batch of {query.shape[0]} does not split into {self.batch_chunks} equal chunks")
        kept, perturbed = query[:-perturbed_rows], query[-perturbed_rows:]
        return torch.cat([kept, gaussian_blur_tokens(perturbed, height, width, self.blur_sigma)])

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)

        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
            grid = (height, width)
        else:
            grid = self._grid(hidden_states.shape[1])

        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])

        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        # The one SEG change: the perturbed chunk's query is blurred over its token grid.
        query = self.blur_perturbed_query(query, *grid)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)

        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        hidden_states = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False
        )

        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def seg_attn_processors(
    blur_sigma: float, latent_size: LatentSize
) -> tuple[SmoothedEnergyAttnProcessor, SmoothedEnergyAttnProcessor]:
    """The (with CFG, without CFG) pair for `PAGMixin.set_pag_applied_layers(..., pag_attn_processors=...)`."""
    return (
        SmoothedEnergyAttnProcessor(blur_sigma, latent_size, batch_chunks=3),
        SmoothedEnergyAttnProcessor(blur_sigma, latent_size, batch_chunks=2),
    )
