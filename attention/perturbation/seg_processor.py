"""Smoothed Energy Guidance's perturbed self-attention processor.

The processor is diffusers' `AttnProcessor2_0` except that the perturbed batch chunk's query is
Gaussian-blurred over its token grid; the grid is derived from the latent size recorded at each
U-Net call and the layer's token count, so non-square images work.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention

from ..integration.attn_processor_parts import unet_attention_heads, unet_attention_output
from ..integration.latent_grid import LatentSize, token_grid
from .seg_blur import gaussian_blur_tokens
from .seg_sigma import check_seg_blur_sigma


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
                "`recording_latent_size(unet)` (the PLADIS SEG pipelines record it per call: `perturbed_calls`)"
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
        if hidden_states.ndim == 4:
            grid = hidden_states.shape[-2:]
        else:
            grid = self._grid(hidden_states.shape[1])
        # The one SEG change: the perturbed chunk's query is blurred over its token grid.
        query, key, value, attention_mask, layout = unet_attention_heads(
            attn,
            hidden_states,
            encoder_hidden_states,
            attention_mask,
            temb,
            query_transform=lambda query: self.blur_perturbed_query(query, *grid),
        )
        hidden_states = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False
        )
        return unet_attention_output(attn, hidden_states.to(query.dtype), layout)


def seg_attn_processors(
    blur_sigma: float, latent_size: LatentSize
) -> tuple[SmoothedEnergyAttnProcessor, SmoothedEnergyAttnProcessor]:
    """The (with CFG, without CFG) pair for `PAGMixin.set_pag_applied_layers(..., pag_attn_processors=...)`."""
    return (
        SmoothedEnergyAttnProcessor(blur_sigma, latent_size, batch_chunks=3),
        SmoothedEnergyAttnProcessor(blur_sigma, latent_size, batch_chunks=2),
    )
