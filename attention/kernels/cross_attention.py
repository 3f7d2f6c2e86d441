"""The cross-attention seam: PLADIS scaled-dot-product attention on (batch, heads, tokens, dim) tensors.

It is the drop-in for `F.scaled_dot_product_attention` inside the processors, for layers whose keys are all
text: every implementation in the kernel table (`table.py`) computes it, and `choose_kernel` picks one per call.
"""

from __future__ import annotations

import torch

from ..settings import PLADISSettings, settings_from
from .kernel_calls import CrossAttentionCall
from .masks import additive_mask
from .table import CROSS_ATTENTION, KernelCase, choose_kernel, needs_autograd, run_kernel


def pladis_scaled_dot_product_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    pladis_scale: float | PLADISSettings,
    pladis_alpha: float = 1.5,
    attn_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """`(softmax(z) + λ·(entmax_α(z) − softmax(z)))·V` with `z = scale·QKᵀ + mask`, like SDPA's layout.

    `query` is (..., Nq, D), `key`/`value` (..., Nk, D/Dv); `attn_mask` broadcasts to (..., Nq, Nk) (SDPA's
    semantics: bool True = attend, float = added). The maps are computed in float32; the result has `query`'s
    dtype. A fully masked row gives zeros. `pladis_scale` is λ, or a `PLADISSettings` holding every setting (the
    processors pass theirs; then leave `pladis_alpha` at its default): λ and α are checked once, there.
    The kernel table picks the implementation (`PLADIS_KERNEL` or `PLADISSettings.kernel`): Triton on CUDA where
    it covers the case, else the sync-free torch path on GPUs and the chunked path on CPU; when autograd records
    the call, a materialised, differentiable path with the same values. All compute the same map.
    """
    settings = settings_from(pladis_scale, pladis_alpha=pladis_alpha)
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    mask = additive_mask(attn_mask)
    autograd = needs_autograd(query, key, value, mask)
    case = KernelCase(CROSS_ATTENTION, query, key.shape[-2], value.shape[-1], mask, settings, autograd)
    return run_kernel(choose_kernel(case), case, CrossAttentionCall(query, key, value, settings, mask, scale))
