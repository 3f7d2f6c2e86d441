"""`PLADISSanaAttnProcessor`: diffusers' `SanaAttnProcessor2_0` (SANA's cross-attention) with PLADIS weights.

SANA's self-attention is linear attention (no softmax, so nothing for PLADIS to sparsify) and is left
alone; its cross-attention differs from `AttnProcessor2_0` (q/k norms across heads, no residual or
spatial norm), so it gets this processor, which follows `SanaAttnProcessor2_0` line for line.
"""

from __future__ import annotations

import torch
from diffusers.models.attention_processor import Attention

from .functional import pladis_scaled_dot_product_attention
from .processor import PLADISSettings


class PLADISSanaAttnProcessor(PLADISSettings):
    """SANA cross-attention computing `(softmax(z) + λ·(entmax_α(z) − softmax(z)))·V`, `z = QKᵀ/√d + mask`.

    The text padding mask SANA passes (an additive bias) is honoured as in SDPA; maps are float32
    whatever the model dtype. λ = `pladis_scale`, α = `pladis_alpha`.
    """

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )

        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])

        query = attn.to_q(hidden_states)

        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states

        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)

        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads

        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)

        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)

        # The one PLADIS change: sparse-extrapolated weights in place of SDPA's softmax.
        hidden_states = pladis_scaled_dot_product_attention(
            query, key, value, self.pladis_scale, self.pladis_alpha, attn_mask=attention_mask
        )

        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)

        # linear proj
        hidden_states = attn.to_out[0](hidden_states)
        # dropout
        hidden_states = attn.to_out[1](hidden_states)

        hidden_states = hidden_states / attn.rescale_output_factor

        return hidden_states
