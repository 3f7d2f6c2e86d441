"""The dense half of the joint text-block rule: stock softmax attention plus what the correction reads.

The correction `m·λ·(entmax_α(z_txt) − softmax(z_txt))·V_txt` is weighted per image query by `m`, the dense mass
the query puts on the text keys. It comes with the dense attention from one fused SDPA op that also returns the
log-sum-exp (`dense_attention_and_log_normaliser`, the op stock SDPA runs on the card), or, where none does, from
one SDPA call over V with an extra text channel (`dense_attention_and_text_mass`). `dense_part` picks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .masks import additive_mask
from .sdpa_backend import CUDNN, EFFICIENT, FLASH, stock_sdpa_backend


def dense_attention_and_text_mass(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    text_keys: slice,
    attn_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(softmax(z)·V, m)` from one SDPA call, with `m = Σ_{k ∈ text_keys} softmax(z)[k]` per query.

    V gets one extra channel that is 1 on the text keys and 0 elsewhere, so that channel of the
    output is exactly `m`. Q, K and V are zero-padded to one head dim (a multiple of 8): QKᵀ is
    unchanged (the scale is passed explicitly) and the fused, O(N)-memory kernels stay eligible.
    Both results are views of the one padded output (five launches on a GPU with SDPA's).
    """
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    value_dim = value.shape[-1]
    padded_dim = -(-max(query.shape[-1], value_dim + 1) // 8) * 8
    extended_value = F.pad(value, (0, padded_dim - value_dim))
    extended_value[..., text_keys, value_dim] = 1
    output = F.scaled_dot_product_attention(
        F.pad(query, (0, padded_dim - query.shape[-1])),
        F.pad(key, (0, padded_dim - key.shape[-1])),
        extended_value,
        attn_mask=attn_mask,
        scale=scale,
    )
    return output[..., :value_dim], output[..., value_dim]


def dense_attention_and_log_normaliser(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """`(softmax(z)·V, logsumexp(z))` from one fused SDPA op that returns the log-sum-exp, or None
    where none serves the case (then `dense_attention_and_text_mass` does, with a padded channel).

    On CPU the flash kernel takes any mask; on CUDA the op stock SDPA runs on the card serves unmasked
    inputs (`cuda_attention_with_log_normaliser`); masked CUDA calls go through SDPA itself, which
    prepares the mask for whichever kernel it picks.
    """
    if query.shape[-1] != value.shape[-1] or key.shape[-1] != query.shape[-1]:
        return None  # the fused kernels take one head size
    if query.device.type == "cpu" and query.dtype in (torch.float32, torch.float16, torch.bfloat16):
        if attn_mask is not None and attn_mask.dtype != query.dtype:  # the kernel takes masks in the query dtype
            if attn_mask.dtype != torch.bool:
                return None
            attn_mask = additive_mask(attn_mask).to(query.dtype)  # 0 / −inf: exact in any float dtype
        output, log_normaliser = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            query, key, value, attn_mask=attn_mask, scale=scale
        )
        return output, log_normaliser
    if query.is_cuda and attn_mask is None and query.shape[-1] % 8 == 0:
        return cuda_attention_with_log_normaliser(query, key, value, scale)
    return None


def cuda_attention_with_log_normaliser(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Unmasked CUDA attention by the fused op stock SDPA runs on this card (`stock_sdpa_backend`):
    `(softmax(z)·V, logsumexp(z))`, the log-sum-exp float32 (B, H, N), natural log — or None where
    stock SDPA would run its unfused math (bfloat16 below sm80), which returns none.

    cuDNN (sm90/sm100 by default) returns it as (B, H, N, 1), the memory-efficient op (float32, and
    everything below sm80, where flash does not run) padded to a multiple of 32 rows; flash as is.
    """
    backend = stock_sdpa_backend(query, key, value)
    if backend == FLASH:
        output, log_normaliser = torch.ops.aten._scaled_dot_product_flash_attention(query, key, value, scale=scale)[:2]
        return output, log_normaliser
    if backend == CUDNN:
        output, log_normaliser = torch.ops.aten._scaled_dot_product_cudnn_attention(
            query, key, value, None, True, scale=scale
        )[:2]
        return output, log_normaliser.squeeze(-1)
    if backend == EFFICIENT:
        output, log_normaliser = torch.ops.aten._scaled_dot_product_efficient_attention(
            query, key, value, None, True, scale=scale
        )[:2]
        return output, log_normaliser[..., : query.shape[-2]]
    return None


def dense_part(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    text: slice,
    attn_mask: torch.Tensor | None,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """`(softmax(z)·V, logsumexp(z) or None, text mass or None)`: one of the two row values the correction reads,
    from the fused op that returns the log-sum-exp where one serves the case, else the text mass."""
    dense = dense_attention_and_log_normaliser(query, key, value, attn_mask, scale)
    if dense is None:
        output, text_mass = dense_attention_and_text_mass(query, key, value, text, attn_mask, scale)
        return output, None, text_mass
    output, log_normaliser = dense
    return output, log_normaliser, None
