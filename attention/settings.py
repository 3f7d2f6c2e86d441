"""PLADIS settings checked once: λ, α, block options, step window and layers of one call, as a frozen object.

The public entries (`apply_pladis`, processors made by hand, `pladis_processors`, the documented math
functions and the two seams) build a `PLADISSettings` from their arguments, or take one in place of λ
(`settings_from`); everything below them (the per-call state, the rules, the kernels) receives that object and
trusts it without checking again.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from .validation import check_flag, check_pladis_alpha, check_pladis_layers, check_pladis_scale, check_pladis_window


@dataclass(frozen=True)
class PLADISSettings:
    """λ (`pladis_scale`), α (`pladis_alpha`), the block options, the step window and the layers of one
    PLADIS call, validated when made.

    `pladis_start`/`pladis_stop`: fractions of the denoising steps; PLADIS acts on step i of N iff
    int(start·N) <= i < int(stop·N) (diffusers' guider semantics). `pladis_layers`: layer ids with the
    semantics of diffusers' `pag_applied_layers`, matched against the family's text-attention module names
    when PLADIS is installed (None: the family's default layers). A bad value raises the
    `TypeError`/`ValueError` of `attention.validation` naming the argument; the fields are then plain floats,
    bools and a tuple of strings (a frozen dataclass of constants, so `torch.compile` traces reads of it as
    graph constants). `kernel`: the call's own choice of implementation, a name from the kernel table
    (`attention.kernels.table`: "auto", "triton", "torch", "chunked", "autograd", "reference"), or None to follow
    the user's `PLADIS_KERNEL`; what the benchmark and tests set, not a pipeline keyword.
    """

    pladis_scale: float
    pladis_alpha: float = 1.5
    pladis_controlnet: bool = False
    pladis_single_blocks: bool = False
    pladis_start: float = 0.0
    pladis_stop: float = 1.0
    pladis_layers: tuple[str, ...] | None = None
    kernel: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "pladis_scale", check_pladis_scale(self.pladis_scale))
        object.__setattr__(self, "pladis_alpha", check_pladis_alpha(self.pladis_alpha))
        object.__setattr__(self, "pladis_controlnet", check_flag("pladis_controlnet", self.pladis_controlnet))
        object.__setattr__(self, "pladis_single_blocks", check_flag("pladis_single_blocks", self.pladis_single_blocks))
        start, stop = check_pladis_window(self.pladis_start, self.pladis_stop)
        object.__setattr__(self, "pladis_start", start)
        object.__setattr__(self, "pladis_stop", stop)
        object.__setattr__(self, "pladis_layers", check_pladis_layers(self.pladis_layers))
        if self.pladis_layers is not None and self.pladis_single_blocks:
            raise ValueError(
                "give pladis_layers or pladis_single_blocks=True, not both: pladis_layers is the whole choice of "
                "layers (name the single-stream blocks in it, e.g. 'single_transformer_blocks')"
            )
        if self.kernel is not None:
            # The kernel names live in the kernel table alone; it is imported only for a call that names one.
            from .kernels.table import check_kernel_choice

            check_kernel_choice(self.kernel)

    @property
    def has_window(self) -> bool:
        """Whether PLADIS acts on part of the denoising steps only (so each denoiser call needs its step)."""
        return (self.pladis_start, self.pladis_stop) != (0.0, 1.0)

    def acts_on_step(self, step: int, steps: int) -> bool:
        """Whether PLADIS acts on denoising step `step` (from 0) of `steps`: int(start·N) <= step < int(stop·N)."""
        return int(self.pladis_start * steps) <= step < int(self.pladis_stop * steps)


# Read once: a compiled graph traces the lookups, not `dataclasses.fields`.
_DEFAULTS = {field.name: field.default for field in fields(PLADISSettings)}


def settings_from(pladis_scale: float | PLADISSettings, **arguments: Any) -> PLADISSettings:
    """The settings of a public entry that takes λ or a `PLADISSettings` in its place: that object as it is (then
    the entry's other PLADIS arguments, `arguments`, must be left at their defaults), else the settings `pladis_scale`
    and `arguments` make, checked."""
    if not isinstance(pladis_scale, PLADISSettings):
        return PLADISSettings(pladis_scale, **arguments)
    given = sorted(name for name, value in arguments.items() if value != _DEFAULTS[name])
    if given:
        raise TypeError(
            f"{', '.join(given)} given beside a PLADISSettings, which already holds every PLADIS setting: give "
            "either the settings object or the arguments"
        )
    return pladis_scale
