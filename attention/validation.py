"""The one place where PLADIS arguments are checked.

Every public entry (processors, `apply_pladis`, pipelines) calls these before doing any work, so a
bad value fails fast with a message naming the argument and leaves the model untouched.
"""

from __future__ import annotations

import math
import numbers


def _check_real(name: str, value: object, accepted: str) -> float:
    """Return `value` as a float, or raise TypeError if it is not a real number (bools excluded)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number ({accepted}), got {type(value).__name__}: {value!r}")
    return float(value)


def check_pladis_scale(pladis_scale: object) -> float:
    """Validate λ: a finite real number ≥ 0 (0 = off, 1 = pure sparse, > 1 extrapolates)."""
    value = _check_real("pladis_scale", pladis_scale, "finite and >= 0")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"pladis_scale must be finite and >= 0 (0 disables PLADIS; 1.5-2.0 is typical), got {pladis_scale!r}")
    return value


def check_pladis_alpha(pladis_alpha: object) -> float:
    """Validate α: a real number in (1, 2] (1.5 = entmax15, 2 = sparsemax)."""
    value = _check_real("pladis_alpha", pladis_alpha, "in (1, 2]")
    if not math.isfinite(value) or not 1.0 < value <= 2.0:
        raise ValueError(f"pladis_alpha must be in (1, 2] (1.5 = entmax15, 2 = sparsemax), got {pladis_alpha!r}")
    return value
