"""Exact α-entmax attention maps and the PLADIS blend, on plain tensors.

The threshold τ of α-entmax solves Σ_i [(α−1)·z_i − τ]_+^{1/(α−1)} = 1. That function of τ is
convex and decreasing for α ∈ (1, 2], so Newton's method started below the root climbs to it
monotonically: no sort (unlike the `entmax` package), no overshoot, and fp32-exact in a few passes.
"""

from __future__ import annotations

import torch

from .validation import check_pladis_alpha

# Newton stops once no row moves τ by more than this (τ lies in [−1, 0) after the max shift).
_THRESHOLD_TOL = 1e-7
_MAX_NEWTON_STEPS = 100


def _as_float(scores: torch.Tensor) -> torch.Tensor:
    """Scores in float32 (float64 kept): thresholds in half precision are not exact."""
    return scores if scores.dtype in (torch.float32, torch.float64) else scores.float()


def _finite_row_max(z: torch.Tensor) -> torch.Tensor:
    """Row maximum, with 0 for rows that are entirely −inf (so they give all-zero maps, not NaN)."""
    row_max = z.amax(dim=-1, keepdim=True)
    return torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))


def _power(t: torch.Tensor, exponent: float) -> torch.Tensor:
    """t ** exponent for t ≥ 0 (0 ** 0 = 0: only the support counts), α = 1.5 / 2 without pow()."""
    if exponent == 0.0:
        return (t > 0).to(t.dtype)
    if exponent == 1.0:
        return t
    if exponent == 2.0:
        return t * t
    return t.pow(exponent)


def entmax_threshold(shifted: torch.Tensor, alpha: float) -> torch.Tensor:
    """Return τ with Σ [shifted − τ]_+^{1/(α−1)} = 1 per row, for `shifted = (α−1)·(z − max z)`.

    Starts at τ = −1, where the max entry alone contributes 1 (so f(τ) ≥ 0, below the root).
    Rows with no finite entry keep τ = −1 and give an all-zero map.
    """
    exponent = 1.0 / (alpha - 1.0)
    tau = torch.full_like(shifted[..., :1], -1.0)
    for _ in range(_MAX_NEWTON_STEPS):
        gap = (shifted - tau).clamp_min_(0.0)
        mass = _power(gap, exponent).sum(dim=-1, keepdim=True)
        slope = _power(gap, exponent - 1.0).sum(dim=-1, keepdim=True).mul_(exponent)
        step = (mass - 1.0).div_(slope).nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
        tau += step
        if not bool((step.abs() > _THRESHOLD_TOL).any()):
            break
    return tau


def entmax_attention(scores: torch.Tensor, alpha: float = 1.5) -> torch.Tensor:
    """α-entmax over the last dim in float32 (float64 kept): α = 1.5 is entmax15, α = 2 sparsemax."""
    check_pladis_alpha(alpha)
    z = _as_float(scores)
    shifted = (z - _finite_row_max(z)).mul_(alpha - 1.0)
    tau = entmax_threshold(shifted, alpha)
    return _power(shifted.sub_(tau).clamp_min_(0.0), 1.0 / (alpha - 1.0))


def softmax_attention(scores: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim in float32 (float64 kept); rows entirely −inf map to all zeros."""
    z = _as_float(scores)
    weights = (z - _finite_row_max(z)).exp_()
    total = weights.sum(dim=-1, keepdim=True)
    return weights.div_(total.clamp_min_(torch.finfo(total.dtype).tiny))


def pladis_weights(scores: torch.Tensor, pladis_scale: float, alpha: float = 1.5) -> torch.Tensor:
    """PLADIS attention map `softmax(z) + λ·(entmax_α(z) − softmax(z))` over the last dim."""
    dense = softmax_attention(scores)
    sparse = entmax_attention(scores, alpha)
    return dense.add_(sparse.sub_(dense), alpha=pladis_scale)
