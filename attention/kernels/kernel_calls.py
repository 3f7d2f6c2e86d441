"""One call of a PLADIS rule as every kernel in the table takes it: the arguments of each seam, in one object.

A kernel is a function of one `CrossAttentionCall` or one `TextBlockCall` (`table.Kernel`), so the table's kernels
share one calling convention and a new kernel reads what it needs from the call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..settings import PLADISSettings


@dataclass(frozen=True)
class CrossAttentionCall:
    """The cross-attention rule `(softmax(z) + λ·(entmax_α(z) − softmax(z)))·V`, `z = scale·QKᵀ + mask`: `query`
    (..., Nq, D), `key`/`value` (..., Nk, D/Dv) over the text keys, the call's `settings`, `mask` additive (broadcasting
    to (..., Nq, Nk)) or None."""

    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    settings: PLADISSettings
    mask: torch.Tensor | None
    scale: float


@dataclass(frozen=True)
class TextBlockCall:
    """The joint rule on (B, H, N, D) `query`/`key`/`value` of one joint sequence with `text` and `image` token
    slices: `attn_mask` as the seam was given it (SDPA's semantics, for a kernel computing the whole rule), `mask`
    additive over the `text` columns. A kernel that adds the image rows' correction to the dense attention gets that
    in `output` (changed in place) with one of its row values: the dense log-sum-exp (`log_normaliser`) or the dense
    text mass (`text_mass`). Under context parallelism `key`/`value` hold the text gathered from every rank and
    `query` this rank's shard (`text` then indexes the gathered text)."""

    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    text: slice
    image: slice
    settings: PLADISSettings
    attn_mask: torch.Tensor | None
    mask: torch.Tensor | None
    scale: float
    output: torch.Tensor | None = None
    log_normaliser: torch.Tensor | None = None
    text_mass: torch.Tensor | None = None
