"""The reference formulation of PLADIS (Kim et al., arXiv 2503.07677, Eq. 6 and the FLUX text block).

Full materialised score maps, `torch.softmax` and the `entmax` package's sort-based maps, exactly as
the paper writes them: independent of every fast path here, so tests and the benchmark check those
against it. Float64 inputs are computed in float64 (tests), anything else in float32. Under
`reference_formulation()` the two seams compute it in place of their kernels.
"""

from __future__ import annotations

import contextvars
from contextlib import contextmanager
from typing import Iterator

import torch

_computing_reference = contextvars.ContextVar("pladis_reference_formulation", default=False)


@contextmanager
def reference_formulation() -> Iterator[None]:
    """Inside, both PLADIS seams compute this module's reference formulation instead of a fast kernel
    (same processors, projections, norms and RoPE): the benchmark's "reference" variant. Per thread
    and task (a `ContextVar`), so a concurrent call elsewhere is not affected."""
    token = _computing_reference.set(True)
    try:
        yield
    finally:
        _computing_reference.reset(token)


def computing_reference() -> bool:
    """Whether the current context asked for the reference formulation (`reference_formulation`)."""
    return _computing_reference.get()


def _compute_dtype(tensor: torch.Tensor) -> torch.dtype:
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


def reference_sparse_map(scores: torch.Tensor, alpha: float) -> torch.Tensor:
    """α-entmax over the last dim by the `entmax` package (entmax15, sparsemax, or bisection for other α).

    The package cannot take −inf (a fully masked row makes it fail), so masked scores are moved far
    below the support and rows with no finite score map to zeros.
    """
    from entmax import entmax15, entmax_bisect, sparsemax

    row_max = scores.detach().amax(dim=-1, keepdim=True)  # a bound only: no gradient through it
    finite_rows = torch.isfinite(row_max)
    floor = torch.where(finite_rows, row_max, torch.zeros_like(row_max)) - 1e6
    safe = torch.where(finite_rows, torch.maximum(scores, floor), torch.zeros_like(scores))
    if alpha == 1.5:
        sparse = entmax15(safe, dim=-1)
    elif alpha == 2.0:
        sparse = sparsemax(safe, dim=-1)
    else:
        sparse = entmax_bisect(safe, alpha, dim=-1, n_iter=100)
    return sparse * finite_rows


def reference_softmax(scores: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim, zeros on rows with no finite score."""
    finite_rows = torch.isfinite(scores.detach().amax(dim=-1, keepdim=True))
    return torch.softmax(torch.where(finite_rows, scores, torch.zeros_like(scores)), dim=-1) * finite_rows


def _scores(query, key, attn_mask, scale) -> torch.Tensor:
    dtype = _compute_dtype(query)
    scores = query.to(dtype) @ key.to(dtype).transpose(-1, -2) * (scale or query.shape[-1] ** -0.5)
    if attn_mask is not None:
        mask = attn_mask if attn_mask.dtype != torch.bool else torch.zeros(
            attn_mask.shape, dtype=dtype, device=attn_mask.device).masked_fill_(~attn_mask, float("-inf"))
        scores = scores + mask.to(dtype)
    return scores


def reference_pladis_sdpa(query, key, value, pladis_scale, pladis_alpha=1.5, attn_mask=None, scale=None):
    """The cross-attention rule: `(softmax(z) + λ·(entmax_α(z) − softmax(z)))·V`, `z = scale·QKᵀ + mask`."""
    scores = _scores(query, key, attn_mask, scale)
    dense = reference_softmax(scores)
    weights = dense + pladis_scale * (reference_sparse_map(scores, pladis_alpha) - dense)
    return (weights @ value.to(weights.dtype)).to(query.dtype)


def reference_text_block(query, key, value, text_length, pladis_scale, pladis_alpha=1.5, *, text_first=True,
                         attn_mask=None, scale=None):
    """The joint text-block rule on the full (N × N) map: the image-query × text-key block becomes
    `m·[λ·entmax_α(z_txt) + (1 − λ)·softmax(z_txt)]`, `m` the dense mass on the text keys."""
    scores = _scores(query, key, attn_mask, scale)
    n = scores.shape[-1]
    text = slice(0, text_length) if text_first else slice(n - text_length, n)
    image = slice(text_length, n) if text_first else slice(0, n - text_length)
    weights = reference_softmax(scores)
    block = scores[..., image, text]
    mass = weights[..., image, text].sum(-1, keepdim=True)
    dense_text = reference_softmax(block)
    weights[..., image, text] = mass * (dense_text + pladis_scale * (reference_sparse_map(block, pladis_alpha) - dense_text))
    return (weights @ value.to(weights.dtype)).to(query.dtype)
