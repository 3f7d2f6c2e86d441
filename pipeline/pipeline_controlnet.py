"""`PLADISStableDiffusionXLControlNetPipeline`: SDXL ControlNet with CFG, PAG or SEG, each with PLADIS.

It is diffusers' `StableDiffusionXLControlNetPAGPipeline` with the same per-call options as
`PLADISStableDiffusionXLSEGPipeline`; PLADIS goes on the UNet's cross-attention, and on the
ControlNet's too with `pladis_controlnet=True`.
"""

from __future__ import annotations

from typing import Any

from diffusers import StableDiffusionXLControlNetPAGPipeline

from .guidance import SEG_INFINITE_BLUR, PerturbedGuidanceMixin
from .saving import SavesAsStockPipeline


class PLADISStableDiffusionXLControlNetPipeline(
    SavesAsStockPipeline, PerturbedGuidanceMixin, StableDiffusionXLControlNetPAGPipeline
):
    """SDXL ControlNet with PLADIS: `pipe(prompt, image=depth, seg_scale=3.0, pladis_scale=3.0)`.

    With `pag_scale=0`, `seg_scale=0` and `pladis_scale=0` (the defaults) it gives the stock
    `StableDiffusionXLControlNetPipeline`'s images (that pipeline's `guess_mode` is not offered).
    """

    def __call__(
        self,
        *args: Any,
        pag_scale: float = 0.0,
        pag_adaptive_scale: float = 0.0,
        pag_applied_layers: str | list[str] | None = None,
        seg_scale: float = 0.0,
        seg_blur_sigma: float = SEG_INFINITE_BLUR,
        seg_applied_layers: str | list[str] | None = None,
        pladis_scale: float = 0.0,
        pladis_alpha: float = 1.5,
        pladis_controlnet: bool = False,
        **kwargs: Any,
    ):
        """Call `StableDiffusionXLControlNetPAGPipeline.__call__` with the chosen guidance.

        The guidance and PLADIS arguments are `PLADISStableDiffusionXLSEGPipeline.__call__`'s (PAG and
        SEG act on the UNet's self-attention); `pladis_controlnet=True` also puts PLADIS on every
        cross-attention layer of the ControlNet(s). Other arguments are the parent's.
        """
        with self._perturbed_guidance(
            pag_scale=pag_scale, pag_adaptive_scale=pag_adaptive_scale, pag_applied_layers=pag_applied_layers,
            seg_scale=seg_scale, seg_blur_sigma=seg_blur_sigma, seg_applied_layers=seg_applied_layers,
            pladis_scale=pladis_scale, pladis_alpha=pladis_alpha, pladis_controlnet=pladis_controlnet,
        ) as perturbed:
            return super().__call__(*args, **perturbed, **kwargs)
