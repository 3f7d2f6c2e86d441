"""SEG's blur σ: its convention for infinite blur and its check, beside SEG (no torch: the command-line tools and
the pipelines check σ before anything loads), so the PLADIS core never imports SEG."""

from __future__ import annotations

import math

from ..validation import check_real

# SEG's convention: a sigma above this means "infinite blur", i.e. every token gets the mean query.
INFINITE_BLUR_SIGMA = 9999.0
# The σ that asks for infinite blur: the SEG reference's default (any value above the threshold would do).
SEG_INFINITE_BLUR = 9999999.0


def check_seg_blur_sigma(seg_blur_sigma: object) -> float:
    """Validate SEG's blur σ: > 0 (a σ above `INFINITE_BLUR_SIGMA`, `inf` included, means infinite blur:
    the mean query)."""
    sigma = check_real("seg_blur_sigma", seg_blur_sigma, "> 0")
    if math.isnan(sigma) or sigma <= 0:
        raise ValueError(
            f"seg_blur_sigma must be > 0 (above {INFINITE_BLUR_SIGMA:g} means infinite blur), got {seg_blur_sigma!r}"
        )
    return sigma
