"""`PLADISJointAttnProcessor`: diffusers' `JointAttnProcessor2_0` (SD3 / SD3.5) with the PLADIS text-block rule.

SD3 concatenates `[img ; txt]` (image tokens FIRST, the reverse of FLUX), so the rule changes the
image-query × text-key block with the text slice at the end; everything else follows
`JointAttnProcessor2_0` line for line.
"""

from __future__ import annotations

import torch
from diffusers.models.attention_processor import Attention

from .joint_text_block import text_block_pladis_attention
from .processor import PLADISSettings


class PLADISJointAttnProcessor(PLADISSettings):
    """SD3 joint attention where PLADIS replaces only the image-query × text-key block.

    With `m` = the dense mass an image query puts on the text keys, that block becomes
    `m·[λ·entmax_α(z_txt) + (1 − λ)·softmax(z_txt)]`; image→image weights and text-query rows stay
    dense, every row sums to 1, and memory stays O(N·L_txt) (`text_block_pladis_attention`).
    Installed by `apply_pladis` on the joint `attn` of every `JointTransformerBlock` (the last one's
    `context_pre_only` included); SD3.5's extra `attn2` is image self-attention and is left alone.
    Without `encoder_hidden_states` there is no text, and it is plain SDPA, as the stock processor.
    It reads the separate `to_q`/`to_k`/`to_v`/`add_*_proj`, which `fuse_qkv_projections` keeps.
    """

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        residual = hidden_states

        batch_size = hidden_states.shape[0]

        # `sample` projections.
        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)

        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads

        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)

        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        # `context` projections.
        text_tokens = 0
        if encoder_hidden_states is not None:
            text_tokens = encoder_hidden_states.shape[1]
            encoder_hidden_states_query_proj = attn.add_q_proj(encoder_hidden_states)
            encoder_hidden_states_key_proj = attn.add_k_proj(encoder_hidden_states)
            encoder_hidden_states_value_proj = attn.add_v_proj(encoder_hidden_states)

            encoder_hidden_states_query_proj = encoder_hidden_states_query_proj.view(
                batch_size, -1, attn.heads, head_dim
            ).transpose(1, 2)
            encoder_hidden_states_key_proj = encoder_hidden_states_key_proj.view(
                batch_size, -1, attn.heads, head_dim
            ).transpose(1, 2)
            encoder_hidden_states_value_proj = encoder_hidden_states_value_proj.view(
                batch_size, -1, attn.heads, head_dim
            ).transpose(1, 2)

            if attn.norm_added_q is not None:
                encoder_hidden_states_query_proj = attn.norm_added_q(encoder_hidden_states_query_proj)
            if attn.norm_added_k is not None:
                encoder_hidden_states_key_proj = attn.norm_added_k(encoder_hidden_states_key_proj)

            query = torch.cat([query, encoder_hidden_states_query_proj], dim=2)
            key = torch.cat([key, encoder_hidden_states_key_proj], dim=2)
            value = torch.cat([value, encoder_hidden_states_value_proj], dim=2)

        # The one PLADIS change: the text-block rule (text tokens LAST) in place of SDPA; like the stock
        # processor it takes no mask (SD3 never passes one).
        hidden_states = text_block_pladis_attention(
            query, key, value, text_tokens, self.pladis_scale, self.pladis_alpha, text_first=False
        )
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)

        if encoder_hidden_states is not None:
            # Split the attention outputs.
            hidden_states, encoder_hidden_states = (
                hidden_states[:, : residual.shape[1]],
                hidden_states[:, residual.shape[1] :],
            )
            if not attn.context_pre_only:
                encoder_hidden_states = attn.to_add_out(encoder_hidden_states)

        # linear proj
        hidden_states = attn.to_out[0](hidden_states)
        # dropout
        hidden_states = attn.to_out[1](hidden_states)

        if encoder_hidden_states is not None:
            return hidden_states, encoder_hidden_states
        else:
            return hidden_states
