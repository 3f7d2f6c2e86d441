"""The joint text-block seam: PLADIS for joint text+image attention (FLUX, SD3), where only the image-query ×
text-key block changes.

With `m` = the dense softmax mass an image query puts on the text keys, that block becomes
`m·[λ·entmax_α(z_txt) + (1 − λ)·softmax(z_txt)]`; it is computed as the stock dense attention
(`dense_attention`) plus a correction that needs only image×text scores, so memory grows as N·L_txt, never N².
Every implementation in the kernel table (`table.py`) computes it, and `choose_kernel` picks one per call, as for
the cross-attention seam beside it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..settings import PLADISSettings, settings_from
from .dense_attention import dense_part
from .kernel_calls import TextBlockCall
from .masks import additive_mask
from .table import TEXT_BLOCK, KernelCase, choose_kernel, needs_autograd, run_kernel


def joint_token_slices(sequence_length: int, text_length: int, text_first: bool = True) -> tuple[slice, slice]:
    """(text, image) token slices of a joint sequence: text first (FLUX `[txt ; img]`) or last (SD3)."""
    if isinstance(text_length, bool) or not isinstance(text_length, int):
        raise TypeError(f"text_length must be an int, got {type(text_length).__name__}: {text_length!r}")
    if not 0 <= text_length <= sequence_length:
        raise ValueError(f"text_length must be in [0, {sequence_length}] (the joint length), got {text_length}")
    image_length = sequence_length - text_length
    if text_first:
        return slice(0, text_length), slice(text_length, sequence_length)
    return slice(image_length, sequence_length), slice(0, image_length)


def text_block_pladis_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    text_length: int,
    pladis_scale: float | PLADISSettings,
    pladis_alpha: float = 1.5,
    *,
    text_first: bool = True,
    attn_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Joint attention `A·V` where PLADIS changes only the image-query × text-key block of `A`.

    `query`, `key`, `value` are (B, H, N, D) over one joint sequence of N tokens whose `text_length`
    text tokens come first (`text_first=True`, FLUX) or last (SD3); `z = scale·QKᵀ + mask` (SDPA's
    mask semantics). For an image query with dense text mass `m = Σ_txt softmax(z)`:

        out = SDPA(Q, K, V) + m·λ·(entmax_α(z_txt) − softmax(z_txt))·V_txt,

    i.e. its text block is `m·[λ·entmax_α(z_txt) + (1 − λ)·softmax(z_txt)]` (maps over the text
    columns only), its image block and the text-query rows stay dense, and every row sums to 1.
    The maps are float32; the result has `query`'s dtype. λ = 0 is plain SDPA. When autograd records
    the call, the correction is computed materialised and differentiable (same values, N·L_txt scores).
    `pladis_scale` is λ, or a `PLADISSettings` holding every setting (the processors pass theirs; then leave
    `pladis_alpha` at its default): λ and α are checked once, there. The kernel table picks the implementation.
    """
    settings = settings_from(pladis_scale, pladis_alpha=pladis_alpha)
    if query.dim() != 4 or key.shape[-2] != query.shape[-2] or value.shape[-2] != query.shape[-2]:
        raise ValueError(
            "text_block_pladis_attention needs (B, H, N, D) query/key/value over one joint sequence, "
            f"got {tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}"
        )
    text, image = joint_token_slices(query.shape[-2], text_length, text_first)
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    if settings.pladis_scale == 0.0 or text.start == text.stop or image.start == image.stop:
        return F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, scale=scale)
    mask = additive_mask(attn_mask)
    if mask is not None and mask.shape[-1] != 1:
        mask = mask[..., text]
    autograd = needs_autograd(query, key, value, mask)
    case = KernelCase(TEXT_BLOCK, query, text.stop - text.start, value.shape[-1], mask, settings, autograd)
    kernel = choose_kernel(case)
    dense = dense_part(query, key, value, text, attn_mask, scale) if kernel.adds_to_dense else (None, None, None)
    return run_kernel(
        kernel, case, TextBlockCall(query, key, value, text, image, settings, attn_mask, mask, scale, *dense)
    )
