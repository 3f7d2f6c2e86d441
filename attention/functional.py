"""PLADIS scaled-dot-product attention on (batch, heads, tokens, dim) tensors.

It is the drop-in for `F.scaled_dot_product_attention` inside the processors: scores are built
in float32 one query chunk at a time, so extra memory stays bounded (~`_CHUNK_ELEMENTS` scores)
whatever the sequence length, and the dense and sparse maps share one `A·V` product.
"""

from __future__ import annotations

import torch

from .sparse_maps import pladis_weights_
from .validation import check_pladis_alpha, check_pladis_scale

# Scores per query chunk (float32): ~8 MB, large enough to keep matmuls efficient.
_CHUNK_ELEMENTS = 1 << 21


def additive_mask(attn_mask: torch.Tensor | None) -> torch.Tensor | None:
    """SDPA mask semantics as an additive float mask: bool True = attend, float = added to scores."""
    if attn_mask is None or attn_mask.dtype != torch.bool:
        return attn_mask
    return torch.zeros(attn_mask.shape, dtype=torch.float32, device=attn_mask.device).masked_fill_(
        ~attn_mask, float("-inf")
    )


def pladis_scaled_dot_product_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    pladis_scale: float,
    pladis_alpha: float = 1.5,
    attn_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """`(softmax(z) + λ·(entmax_α(z) − softmax(z)))·V` with `z = scale·QKᵀ + mask`, like SDPA's layout.

    `query` is (..., Nq, D), `key`/`value` (..., Nk, D/Dv); `attn_mask` broadcasts to (..., Nq, Nk).
    The maps are computed in float32; the result has `query`'s dtype. A fully masked row gives zeros.
    """
    pladis_scale = check_pladis_scale(pladis_scale)
    check_pladis_alpha(pladis_alpha)
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    mask = additive_mask(attn_mask)
    key_t = key.float().transpose(-1, -2)
    value_f = value.float()
    rows, keys = query.shape[-2], key.shape[-2]
    # Equal chunks (as few as fit the budget), so one workspace serves every chunk.
    batch_heads = query[..., :1, :1].numel()
    chunks = -(-rows * batch_heads * keys // _CHUNK_ELEMENTS)
    rows_per_chunk = -(-rows // max(1, chunks))
    chunk_shape = (*query.shape[:-2], rows_per_chunk, keys)
    scores_buffer = query.new_empty(chunk_shape, dtype=torch.float32)
    workspace = tuple(torch.empty_like(scores_buffer) for _ in range(3))
    output = query.new_empty((*query.shape[:-1], value.shape[-1]), dtype=torch.float32)
    for start in range(0, rows, rows_per_chunk):
        stop = min(start + rows_per_chunk, rows)
        if stop - start == rows_per_chunk:
            scores, buffers = scores_buffer, workspace
        else:  # a shorter last chunk gets its own buffers
            scores, buffers = torch.empty_like(scores_buffer[..., : stop - start, :]), None
        torch.matmul(query[..., start:stop, :].float(), key_t, out=scores).mul_(scale)
        if mask is not None:
            per_row = mask.dim() >= 2 and mask.shape[-2] != 1
            scores.add_(mask[..., start:stop, :] if per_row else mask)
        weights = pladis_weights_(scores, pladis_scale, pladis_alpha, buffers)
        torch.matmul(weights, value_f, out=output[..., start:stop, :])
    return output.to(query.dtype)
