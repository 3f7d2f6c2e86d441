"""Hard inputs for the PLADIS attention paths, shared by the sync-free and Triton kernel tests.

Each case is (query, key, value, additive mask or None, scale) on (B, H, N, D) tensors: random
scores, a dominant first (BOS) key, tied keys, logits ~1e4, −inf keys, fully masked query rows,
and a single key. The processors' memory layout (B, N, H, D) is used for the query.
"""

from __future__ import annotations

import torch

CASES = ("random", "bos", "ties", "huge", "masked", "fully_masked", "single_key")


def attention_case(
    name: str, keys: int = 77, rows: int = 24, heads: int = 2, dim: int = 16, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, float]:
    generator = torch.Generator().manual_seed(seed)
    keys = 1 if name == "single_key" else keys
    query = torch.randn(2, rows, heads, dim, generator=generator).transpose(1, 2)  # (B, N, H, D) memory
    key = torch.randn(2, heads, keys, dim, generator=generator)
    value = torch.randn(2, heads, keys, dim, generator=generator)
    scale, mask = dim**-0.5 * 2.0, None
    if name == "bos":
        mask = torch.zeros(2, 1, 1, keys)
        mask[..., 0] = 8.0
    elif name == "ties":
        key[..., 1::2, :] = key[..., 0:-1:2, :][..., : key[..., 1::2, :].shape[-2], :]
    elif name == "huge":
        scale = 2e3  # logits ~1e4 apart: both maps one-hot, nothing overflows
    elif name == "masked":
        mask = torch.zeros(2, 1, 1, keys).masked_fill_(
            torch.rand(2, 1, 1, keys, generator=generator) < 0.4, float("-inf")
        )
        mask[..., 0] = 0.0
    elif name == "fully_masked":
        mask = torch.zeros(2, 1, rows, keys)
        mask[:, :, ::3, :] = float("-inf")  # every third query row sees no key
        mask[:, :, 1::3, keys // 2 :] = float("-inf")
    return query, key, value, mask, scale
