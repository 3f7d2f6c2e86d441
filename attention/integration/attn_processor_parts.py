"""`AttnProcessor2_0`'s prologue and epilogue, for processors that change its attention product (SEG, the
attention-map recorder).

Everything around the attention product (spatial/group norm, q/k norms, masks, residual, output
rescale) follows `AttnProcessor2_0` line for line in `unet_attention_heads` / `unet_attention_output`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers.models.attention_processor import Attention


@dataclass
class UNetAttentionLayout:
    """What `unet_attention_output` needs to undo `unet_attention_heads`' reshapes."""

    residual: torch.Tensor
    spatial_shape: tuple[int, int, int, int] | None  # (B, C, H, W) of a 4-D input, else None
    batch_size: int
    head_dim: int


def unet_attention_heads(
    attn: Attention,
    hidden_states: torch.Tensor,
    encoder_hidden_states: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    temb: torch.Tensor | None = None,
    query_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, UNetAttentionLayout]:
    """`AttnProcessor2_0` up to its attention product: (query, key, value, mask, layout) with q/k/v as
    (batch, heads, tokens, head_dim). `query_transform` sees the projected query before the head split
    (SEG blurs it there). Shared by every processor that keeps `AttnProcessor2_0`'s contract."""
    residual = hidden_states
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)

    spatial_shape = None
    if hidden_states.ndim == 4:
        spatial_shape = batch_size, channel, height, width = hidden_states.shape
        hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)

    batch_size, sequence_length, _ = (
        hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
    )
    if attention_mask is not None:
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
        attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])

    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

    query = attn.to_q(hidden_states)
    if query_transform is not None:
        query = query_transform(query)
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
    return query, key, value, attention_mask, UNetAttentionLayout(residual, spatial_shape, batch_size, head_dim)


def unet_attention_output(attn: Attention, hidden_states: torch.Tensor, layout: UNetAttentionLayout) -> torch.Tensor:
    """`AttnProcessor2_0` after its attention product: merge heads, `to_out`, reshape, residual, rescale."""
    batch_size = layout.batch_size
    hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * layout.head_dim)
    hidden_states = attn.to_out[0](hidden_states)
    hidden_states = attn.to_out[1](hidden_states)
    if layout.spatial_shape is not None:
        hidden_states = hidden_states.transpose(-1, -2).reshape(layout.spatial_shape)
    if attn.residual_connection:
        hidden_states = hidden_states + layout.residual
    return hidden_states / attn.rescale_output_factor
