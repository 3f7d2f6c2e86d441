"""The reference formulation of PLADIS (Kim et al., arXiv 2503.07677, Eq. 6 and the FLUX text block).

Full materialised score maps, `torch.softmax` and the `entmax` package's sort-based maps, exactly as
the paper writes them: independent of every fast path here, so tests and the benchmark check those
against it. It imports nothing of the fast paths (no `sparse_maps`, sync-free or Triton code), so a bug
there cannot hide in it. Float64 inputs, or `float64=True` (the tests), are computed in float64, anything
else in float32. The kernel table registers it as the `reference` kernel (`PLADISSettings(kernel="reference")`: the
two seams compute it in place of a fast kernel, what the benchmark times as "reference"); the tests compare the
seams, the processors and whole denoisers with it (`tests/materialised_reference.py`).
"""

from __future__ import annotations

import torch


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


def reference_scores(query, key, attn_mask=None, scale=None, *, float64: bool = False) -> torch.Tensor:
    """`z = scale·QKᵀ + mask` materialised (SDPA's mask semantics: bool True = attend, float = added), in
    float64 for float64 inputs or with `float64=True` (the tests' reference), else in float32."""
    dtype = torch.float64 if float64 else _compute_dtype(query)
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    scores = query.to(dtype) @ key.to(dtype).transpose(-1, -2) * scale
    if attn_mask is not None:
        mask = (
            attn_mask
            if attn_mask.dtype != torch.bool
            else torch.zeros(attn_mask.shape, dtype=dtype, device=attn_mask.device).masked_fill_(
                ~attn_mask, float("-inf")
            )
        )
        scores = scores + mask.to(dtype)
    return scores


def reference_pladis_weights(scores: torch.Tensor, pladis_scale: float, pladis_alpha: float = 1.5) -> torch.Tensor:
    """The paper's map over the last dim, `softmax(z) + λ·(entmax_α(z) − softmax(z))`, in the scores' dtype."""
    dense = reference_softmax(scores)
    return dense + pladis_scale * (reference_sparse_map(scores, pladis_alpha) - dense)


def reference_text_block_weights(
    scores: torch.Tensor, text_length: int, pladis_scale: float, pladis_alpha: float = 1.5, *, text_first: bool = True
) -> torch.Tensor:
    """The joint text-block map on the full (N × N) scores of one joint sequence whose `text_length` text
    tokens come first (FLUX) or last (SD3): dense softmax rows, except the image-query × text-key block,
    which becomes `m·[λ·entmax_α(z_txt) + (1 − λ)·softmax(z_txt)]`, `m` the row's dense mass on the text
    keys."""
    n = scores.shape[-1]
    text = slice(0, text_length) if text_first else slice(n - text_length, n)
    image = slice(text_length, n) if text_first else slice(0, n - text_length)
    weights = reference_softmax(scores)
    mass = weights[..., image, text].sum(-1, keepdim=True)
    weights[..., image, text] = mass * reference_pladis_weights(scores[..., image, text], pladis_scale, pladis_alpha)
    return weights


def reference_pladis_sdpa(
    query, key, value, pladis_scale, pladis_alpha=1.5, attn_mask=None, scale=None, *, float64: bool = False
):
    """The cross-attention rule: `(softmax(z) + λ·(entmax_α(z) − softmax(z)))·V`, `z = scale·QKᵀ + mask`,
    returned in `query`'s dtype (computed as `reference_scores` says)."""
    weights = reference_pladis_weights(
        reference_scores(query, key, attn_mask, scale, float64=float64), pladis_scale, pladis_alpha
    )
    return (weights @ value.to(weights.dtype)).to(query.dtype)


def reference_text_block(
    query,
    key,
    value,
    text_length,
    pladis_scale,
    pladis_alpha=1.5,
    *,
    text_first=True,
    attn_mask=None,
    scale=None,
    float64: bool = False,
):
    """The joint text-block rule on the full (N × N) map (`reference_text_block_weights`) times V, returned
    in `query`'s dtype."""
    weights = reference_text_block_weights(
        reference_scores(query, key, attn_mask, scale, float64=float64),
        text_length,
        pladis_scale,
        pladis_alpha,
        text_first=text_first,
    )
    return (weights @ value.to(weights.dtype)).to(query.dtype)
