"""Exact α-entmax thresholds with no data-dependent control flow: sort-based roots, fixed passes.

The pass loop of `sparse_maps.entmax_threshold` asks the host after every pass whether rows are
still moving; on a GPU each such question is a sync that drains the queue. Here α = 1.5 and α = 2
take the closed-form root over the sorted row (the `entmax` package's exact algorithm: the support
is the longest sorted prefix whose mass at its own last entry is below the target), and any other
α takes a fixed number of bisection halvings and monotone Newton steps. Every op is a fixed-size
tensor op, so the whole threshold is a short, sync-free launch sequence (and traces into
`torch.compile` graphs).

For α = 1.5 / 2 the support size comes from one `searchsorted` over the prefix masses
`M_k = Σ_{j≤k} (x_j − x_k)^p` (p = 2 / 1), which rise with k: five full-size passes after the sort,
no per-prefix roots, no comparison masks, and only (rows, 1) index tensors.
"""

from __future__ import annotations

import torch

_BISECTION_HALVINGS = 30  # [−1, 0] halved 30 times: a lower bound of τ within 1e-9
_NEWTON_STEPS = 3  # monotone from below: they close the last gap to float32 precision
_FLOOR = -2.0  # entries ≤ −1 never reach the support (τ ≥ −1): clamping them keeps every sum finite


def _ranks(width: int, like: torch.Tensor) -> torch.Tensor:
    """k = 1 … width, on `like`'s device and dtype."""
    return torch.arange(1, width + 1, device=like.device, dtype=like.dtype)


def sorted_support_threshold(ordered: torch.Tensor, mass: float, power: int) -> torch.Tensor:
    """θ (shape `ordered.shape[:-1] + (1,)`) with Σ_j [x_j − θ]_+^power = mass, exactly, for rows
    sorted in descending order, finite (power 2: α = 1.5; power 1: α = 2, sparsemax), `mass` > 0.

    The rows should be centred (their maximum at or near 0: `centred_rows`), so the prefix sums stay
    well conditioned and θ keeps its digits; the map is then `[x − θ]_+^power / mass`, which sums to 1.
    """
    shifted = ordered
    ranks = _ranks(shifted.shape[-1], shifted)
    first = torch.cumsum(shifted, dim=-1)  # Σ_{j≤k} x_j
    if power == 1:
        # M_k = Σ_{j≤k} (x_j − x_k) = first_k − k·x_k
        prefix_mass = torch.addcmul(first, shifted, ranks, value=-1.0)
    else:
        second = torch.square(shifted).cumsum_(dim=-1)  # Σ_{j≤k} x_j²
        # M_k = second_k − 2·x_k·first_k + k·x_k² = second_k − 2·x_k·(first_k − k·x_k/2)
        half_gap = torch.addcmul(first, shifted, ranks, value=-0.5)
        prefix_mass = torch.addcmul(second, shifted, half_gap, value=-2.0, out=half_gap)
    # M_k rises with k, and k is in the support exactly when M_k < mass: M_1 = 0, so 1 ≤ |S| ≤ width.
    target = torch.full((*shifted.shape[:-1], 1), mass, device=shifted.device, dtype=shifted.dtype)
    size = torch.searchsorted(prefix_mass, target)
    last = size - 1
    size = size.to(shifted.dtype)
    mean = first.gather(-1, last).div_(size)
    if power == 1:
        root = mean.sub_(mass / size)  # (Σ_S x − mass)/|S|
    else:  # the smaller root of |S|·θ² − 2·Σ_S x·θ + Σ_S x² − mass = 0
        spread = second.gather(-1, last).div_(size).addcmul_(mean, mean, value=-1.0)  # the support's variance
        root = mean.sub_(torch.rsub(spread, mass / size).clamp_min_(0.0).sqrt_())
    return root


def centred_rows(ordered: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`(rows − max, max)` for rows sorted in descending order, centred in place (max: (…, 1))."""
    top = ordered[..., :1].clone()
    return ordered.sub_(top), top


def _sorted_root(shifted: torch.Tensor, alpha: float) -> torch.Tensor:
    """τ for α = 1.5 or 2 from the descending sort (`shifted` ∈ [−inf, 0], clamped here)."""
    ordered = shifted.sort(dim=-1, descending=True).values.clamp_min_(_FLOOR)
    return sorted_support_threshold(ordered, 1.0, 1 if alpha == 2.0 else 2)


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
