"""Attention masks as the PLADIS paths read them: SDPA's semantics turned additive, sliced per query rows
(and per-row values, such as the text mass, sliced the same way)."""

from __future__ import annotations

import torch


def additive_mask(attn_mask: torch.Tensor | None) -> torch.Tensor | None:
    """SDPA mask semantics as an additive float mask: bool True = attend, float = added to scores."""
    if attn_mask is None or attn_mask.dtype != torch.bool:
        return attn_mask
    return torch.full(attn_mask.shape, float("-inf"), dtype=torch.float32, device=attn_mask.device).masked_fill_(
        attn_mask, 0.0
    )  # two launches on a GPU


def mask_for_rows(mask: torch.Tensor | None, rows: slice) -> torch.Tensor | None:
    """The part of an additive mask that applies to query `rows` (a mask without per-query rows as is)."""
    if mask is None or mask.dim() < 2 or mask.shape[-2] == 1:
        return mask
    return mask[..., rows, :]


def row_values(values: torch.Tensor | None, rows: slice) -> torch.Tensor | None:
    """Per-query-row values (…, N) for query `rows`, shaped (…, rows, 1) to scale score rows; None as is."""
    return None if values is None else values[..., rows, None]


def four_dims(tensor: torch.Tensor | None) -> torch.Tensor | None:
    """A (…, rows, cols) tensor as 4 dims: leading 1s added (views, so a broadcast mask stays small),
    more than two leading dims flattened into the first; None as is."""
    if tensor is None:
        return None
    while tensor.dim() < 4:
        tensor = tensor.unsqueeze(0)
    return tensor.reshape(-1, *tensor.shape[-3:]) if tensor.dim() > 4 else tensor
