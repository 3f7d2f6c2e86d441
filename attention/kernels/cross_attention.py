"""PLADIS scaled-dot-product attention on (batch, heads, tokens, dim) tensors.

It is the drop-in for `F.scaled_dot_product_attention` inside the processors: scores are built
in float32 one query chunk at a time (`query_chunks`), so extra memory stays bounded (~`_CHUNK_ELEMENTS`
scores) whatever the sequence length, and the dense and sparse maps share one `A·V` product.
"""

from __future__ import annotations

import torch

from ..settings import PLADISSettings
from .masks import additive_mask, mask_for_rows
from .query_chunks import query_chunks
from .reference import computing_reference, reference_pladis_sdpa
from .sparse_maps import differentiable_maps, pladis_weights_
from .sync_free_attention import sync_free_pladis_attention
from .table import choose_kernel, run_triton, triton_gap

# Scores per query chunk (float32): ~4 MB, so the chunk and its workspace mostly stay in cache between
# the passes of the threshold search while the matmuls stay efficient (2 and 8 MB measured slower).
_CHUNK_ELEMENTS = 1 << 20


def needs_autograd(*tensors: torch.Tensor | None) -> bool:
    """Whether autograd records this call (grad mode on and an input requiring grad): the fast
    in-place chunked paths cannot be recorded, so `differentiable_score_maps` replaces them."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def differentiable_score_maps(
    query: torch.Tensor, key: torch.Tensor, scale: float, mask: torch.Tensor | None, alpha: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(softmax(z), entmax_α(z))` for `z = scale·QKᵀ + mask`, materialised and differentiable, in
    float32 (float64 kept): what both PLADIS rules use when autograd records the call."""
    dtype = torch.float64 if query.dtype == torch.float64 else torch.float32
    scores = query.to(dtype) @ key.to(dtype).transpose(-1, -2) * scale
    return differentiable_maps(scores if mask is None else scores + mask, alpha)


def _output_like(query: torch.Tensor, value_dim: int) -> torch.Tensor:
    """A float32 (..., Nq, Dv) result laid out like `query`: for the processors' (B, N, H, D) memory
    seen as (B, H, N, D), merging heads afterwards is then a view rather than a copy (as for SDPA)."""
    shape = (*query.shape[:-1], value_dim)
    if query.dim() == 4 and query.transpose(1, 2).is_contiguous():
        return query.new_empty((shape[0], shape[2], shape[1], shape[3]), dtype=torch.float32).transpose(1, 2)
    return query.new_empty(shape, dtype=torch.float32)


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
    `PLADIS_KERNEL` picks the implementation (`kernel_choice`): Triton on CUDA where it covers the
    case, else the sync-free torch path on GPUs and the chunked path on CPU; all compute the same map.
    When autograd records the call (grad mode on, an input requiring grad) it takes a materialised,
    differentiable path with the same values (`differentiable_score_maps`) instead of the in-place chunks.
    λ and α are checked here, once (`PLADISSettings`); the processors call `cross_attention_rule` directly.
    """
    settings = PLADISSettings(pladis_scale, pladis_alpha)
    return cross_attention_rule(query, key, value, settings.pladis_scale, settings.pladis_alpha, attn_mask, scale)


def cross_attention_rule(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    pladis_scale: float,
    pladis_alpha: float,
    attn_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """The cross-attention seam (`pladis_scaled_dot_product_attention`) on λ/α already checked by a
    `PLADISSettings`: it picks the kernel and trusts its settings (the processors' attention call)."""
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    if computing_reference():
        return reference_pladis_sdpa(query, key, value, pladis_scale, pladis_alpha, attn_mask, scale)
    mask = additive_mask(attn_mask)
    if needs_autograd(query, key, value, mask):
        dense, sparse = differentiable_score_maps(query, key, scale, mask, pladis_alpha)
        weights = dense + pladis_scale * (sparse - dense)
        return (weights @ value.to(weights.dtype)).to(query.dtype)
    kernel = choose_kernel(
        "cross-attention", query.device, triton_gap(query, key.shape[-2], value.shape[-1], pladis_alpha, mask)
    )
    if kernel != "chunked":
        arguments = (query, key, value, pladis_scale, pladis_alpha, mask, scale)
        if kernel == "torch":
            return sync_free_pladis_attention(*arguments)
        from .triton_kernels import triton_pladis_attention

        return run_triton(
            "cross-attention",
            lambda: triton_pladis_attention(*arguments),
            lambda: sync_free_pladis_attention(*arguments),
        )
    return _chunked_pladis_attention(query, key, value, pladis_scale, pladis_alpha, mask, scale)


def _chunked_pladis_attention(query, key, value, pladis_scale, pladis_alpha, mask, scale) -> torch.Tensor:
    """The CPU path: float32 query chunks over one reused workspace, exact pass-solver thresholds."""
    # K and V in float32 and contiguous once (K scaled once), so no chunk's matmul copies them again.
    key_t = key.float().mul(scale).contiguous().transpose(-1, -2)
    value_f = value.float().contiguous()
    output = _output_like(query, value.shape[-1])
    rows = slice(0, query.shape[-2])
    for chunk in query_chunks(query, rows, key.shape[-2], value.shape[-1], _CHUNK_ELEMENTS):
        scores = torch.matmul(chunk.query, key_t, out=chunk.scores)
        if mask is not None:
            scores.add_(mask_for_rows(mask, chunk.rows))
        weights = pladis_weights_(scores, pladis_scale, pladis_alpha, chunk.workspace)
        output[..., chunk.rows, :].copy_(torch.matmul(weights, value_f, out=chunk.product))
    return output.to(query.dtype)
