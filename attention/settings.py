"""PLADIS settings checked once: λ, α and the block options of one call, as a frozen object.

The public entries (`apply_pladis`, processors made by hand, `pladis_processors`, the documented math
functions and the two seams) build a `PLADISSettings` from their arguments; everything below them (the
per-call state, the rules, the kernels) receives it, or its floats, and trusts it without checking again.
"""

from __future__ import annotations

from dataclasses import dataclass

from .validation import check_flag, check_pladis_alpha, check_pladis_scale


@dataclass(frozen=True)
class PLADISSettings:
    """λ (`pladis_scale`), α (`pladis_alpha`) and the block options of one PLADIS call, validated when made.

    A bad value raises the `TypeError`/`ValueError` of `attention.validation` naming the argument; the
    fields are then plain floats and bools (a frozen dataclass of constants, so `torch.compile` traces
    reads of it as graph constants).
    """

    pladis_scale: float
    pladis_alpha: float = 1.5
    pladis_controlnet: bool = False
    pladis_single_blocks: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "pladis_scale", check_pladis_scale(self.pladis_scale))
        object.__setattr__(self, "pladis_alpha", check_pladis_alpha(self.pladis_alpha))
        object.__setattr__(self, "pladis_controlnet", check_flag("pladis_controlnet", self.pladis_controlnet))
        object.__setattr__(self, "pladis_single_blocks", check_flag("pladis_single_blocks", self.pladis_single_blocks))
