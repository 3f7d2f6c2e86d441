"""`PLADISFluxAttnProcessor`: diffusers' `FluxAttnProcessor` with the PLADIS text-block rule.

Everything around the attention product (fused or separate projections, RMS norms, `[txt ; img]`
concatenation, RoPE, output split and projections) follows `FluxAttnProcessor` line for line; the
text length that single-stream blocks never receive is recorded per transformer call by a hook.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_flux import FluxAttention, _get_qkv_projections

from .joint_text_block import text_block_pladis_attention
from .processor import PLADISSettings


class TextLength:
    """The number of text tokens leading the joint sequence in the current transformer call.

    `recorded_text_length` sets `tokens` from the `encoder_hidden_states` the pipeline passes to the
    transformer; single-stream processors read it, since diffusers does not pass it to them.
    """

    def __init__(self) -> None:
        self.tokens: int | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(tokens={self.tokens})"


@contextmanager
def recorded_text_length(transformer: torch.nn.Module, text_length: TextLength) -> Iterator[TextLength]:
    """Keep `text_length` up to date with a forward pre-hook on `transformer` that reads
    `encoder_hidden_states.shape[1]` on every call; the hook is removed on exit, also on errors."""

    def record(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        states = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
        text_length.tokens = None if states is None else int(states.shape[1])

    handle = transformer.register_forward_pre_hook(record, with_kwargs=True)
    try:
        yield text_length
    finally:
        handle.remove()
        text_length.tokens = None


class PLADISFluxAttnProcessor(PLADISSettings):
    """FLUX joint attention where PLADIS replaces only the image-query × text-key block.

    With `m` = the dense mass an image query puts on the text keys, that block becomes
    `m·[λ·entmax_α(z_txt) + (1 − λ)·softmax(z_txt)]`; image→image weights and text-query rows stay
    dense and every row sums to 1 (see `text_block_pladis_attention`: SDPA plus an image×text
    correction, so memory stays O(N·L_txt)). λ = `pladis_scale`, α = `pladis_alpha`.

    In double-stream blocks (`transformer_blocks`, the default use by `apply_pladis`) the text length
    is `encoder_hidden_states.shape[1]`. Single-stream blocks (`single_transformer_blocks`, only with
    `apply_pladis(..., pladis_single_blocks=True)`, since the reference is unclear on them) get the
    already concatenated sequence, so they need `text_length`, a `TextLength` recorded from the
    pipeline's call; without it they raise rather than guess. The dense part always runs on PyTorch
    SDPA, whatever `set_attention_backend` chose.
    """

    _attention_backend = None
    _parallel_config = None

    def __init__(self, pladis_scale: float, pladis_alpha: float = 1.5, text_length: TextLength | None = None) -> None:
        super().__init__(pladis_scale, pladis_alpha)
        if text_length is not None and not isinstance(text_length, TextLength):
            raise TypeError(f"text_length must be a TextLength (see recorded_text_length), got {text_length!r}")
        self.text_length = text_length

    def _text_tokens(self, encoder_hidden_states: torch.Tensor | None) -> int:
        """Text tokens leading the joint sequence: from the double-stream input, or as recorded."""
        if encoder_hidden_states is not None:
            return encoder_hidden_states.shape[1]
        if self.text_length is None or self.text_length.tokens is None:
            raise RuntimeError(
                "PLADISFluxAttnProcessor in a single-stream block needs the text length of the current "
                "transformer call; install it with apply_pladis(pipe, ..., pladis_single_blocks=True)"
            )
        return self.text_length.tokens

    def __call__(
        self,
        attn: FluxAttention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        text_tokens = self._text_tokens(encoder_hidden_states)
        query, key, value, encoder_query, encoder_key, encoder_value = _get_qkv_projections(
            attn, hidden_states, encoder_hidden_states
        )

        query = query.unflatten(-1, (-1, attn.head_dim))
        key = key.unflatten(-1, (-1, attn.head_dim))
        value = value.unflatten(-1, (-1, attn.head_dim))

        query = attn.norm_q(query)
        key = attn.norm_k(key)

        if attn.added_kv_proj_dim is not None:
            encoder_query = encoder_query.unflatten(-1, (-1, attn.head_dim))
            encoder_key = encoder_key.unflatten(-1, (-1, attn.head_dim))
            encoder_value = encoder_value.unflatten(-1, (-1, attn.head_dim))

            encoder_query = attn.norm_added_q(encoder_query)
            encoder_key = attn.norm_added_k(encoder_key)

            query = torch.cat([encoder_query, query], dim=1)
            key = torch.cat([encoder_key, key], dim=1)
            value = torch.cat([encoder_value, value], dim=1)

        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)

        # The one PLADIS change: the text-block rule in place of dispatch_attention_fn (B, S, H, D → B, H, S, D).
        if attention_mask is not None and attention_mask.ndim == 2:
            attention_mask = attention_mask[:, None, None, :]  # (B, keys), as diffusers' native backend reads it
        hidden_states = text_block_pladis_attention(
            query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), text_tokens,
            self.pladis_scale, self.pladis_alpha, text_first=True, attn_mask=attention_mask,
        ).transpose(1, 2)
        hidden_states = hidden_states.flatten(2, 3)
        hidden_states = hidden_states.to(query.dtype)

        if encoder_hidden_states is not None:
            encoder_hidden_states, hidden_states = hidden_states.split_with_sizes(
                [encoder_hidden_states.shape[1], hidden_states.shape[1] - encoder_hidden_states.shape[1]], dim=1
            )
            hidden_states = attn.to_out[0](hidden_states.contiguous())
            hidden_states = attn.to_out[1](hidden_states)
            encoder_hidden_states = attn.to_add_out(encoder_hidden_states.contiguous())

            return hidden_states, encoder_hidden_states
        else:
            return hidden_states
