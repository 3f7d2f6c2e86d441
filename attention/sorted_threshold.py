"""Exact α-entmax thresholds with no data-dependent control flow: sort-based roots, fixed passes.

The pass loop of `sparse_maps.entmax_threshold` asks the host after every pass whether rows are
still moving; on a GPU each such question is a sync that drains the queue. Here α = 1.5 and α = 2
take the closed-form roots over the sorted row (the `entmax` package's exact algorithm: the support
is the longest sorted prefix whose root lies at or below its last entry), and any other α takes a
fixed number of bisection halvings and monotone Newton steps. Every op is a fixed-size tensor op,
so the whole threshold is a short, sync-free launch sequence (and traces into `torch.compile` graphs).
"""

from __future__ import annotations

import torch

_BISECTION_HALVINGS = 30  # [−1, 0] halved 30 times: a lower bound of τ within 1e-9
_NEWTON_STEPS = 3  # monotone from below: they close the last gap to float32 precision
_FLOOR = -2.0  # entries ≤ −1 never reach the support (τ ≥ −1): clamping them keeps every sum finite


def _inverse_ranks(width: int, like: torch.Tensor) -> torch.Tensor:
    """1/k for k = 1 … width, on `like`'s device and dtype."""
    return torch.arange(1, width + 1, device=like.device, dtype=like.dtype).reciprocal_()


def _sorted_root(shifted: torch.Tensor, alpha: float) -> torch.Tensor:
    """τ for α = 1.5 or 2 from the descending sort: the root on each prefix, read at the support size."""
    ordered = shifted.sort(dim=-1, descending=True).values.clamp_min_(_FLOOR)
    inverse = _inverse_ranks(shifted.shape[-1], ordered)
    if alpha == 2.0:  # τ_k = (Σ_{j≤k} x_j − 1)/k
        roots = ordered.cumsum(-1).sub_(1.0).mul_(inverse)
    else:  # τ_k = mean_k − sqrt(1/k − (mean of squares_k − mean_k²))
        mean = ordered.cumsum(-1).mul_(inverse)
        spread = ordered.square().cumsum_(-1).mul_(inverse)
        roots = mean.sub_(torch.rsub(spread, inverse).addcmul_(mean, mean).clamp_min_(0.0).sqrt_())
    support = (roots <= ordered).sum(dim=-1, keepdim=True)
    return roots.gather(-1, support.sub_(1))


def _bisected_root(shifted: torch.Tensor, alpha: float) -> torch.Tensor:
    """τ for any α ∈ (1, 2]: bisection keeps a lower bound (mass ≥ 1), Newton steps from below finish."""
    x = shifted.clamp_min(_FLOOR)
    exponent = 1.0 / (alpha - 1.0)
    lower = x.new_full((*x.shape[:-1], 1), -1.0)
    width = 1.0
    for _ in range(_BISECTION_HALVINGS):
        width /= 2
        mass = (x - (lower + width)).clamp_min_(0.0).pow_(exponent).sum(-1, keepdim=True)
        lower = torch.where(mass >= 1.0, lower + width, lower)
    for _ in range(_NEWTON_STEPS):
        gap = (x - lower).clamp_min_(0.0)
        slope = (gap.pow(exponent - 1.0) * (gap > 0)).sum(-1, keepdim=True) * exponent
        lower = lower + ((gap.pow(exponent).sum(-1, keepdim=True) - 1.0) / slope).nan_to_num_(0.0, 0.0, 0.0)
    return lower


def sorted_entmax_threshold(shifted: torch.Tensor, alpha: float) -> torch.Tensor:
    """τ (shape `shifted.shape[:-1] + (1,)`) with Σ [shifted − τ]_+^{1/(α−1)} = 1, without host syncs.

    `shifted = (α−1)·(z − max z)`, so τ ∈ [−1, 0); −inf entries are allowed (a row entirely −inf
    gets a finite τ, and its map `[shifted − τ]_+` is zero).
    """
    if alpha in (1.5, 2.0):
        return _sorted_root(shifted, alpha)
    return _bisected_root(shifted, alpha)
