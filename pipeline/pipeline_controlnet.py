"""`PLADISStableDiffusionXLControlNetPipeline`: SDXL ControlNet with CFG, PAG or SEG, each with PLADIS.

It is diffusers' `StableDiffusionXLControlNetPAGPipeline` with the same per-call options as
`PLADISStableDiffusionXLSEGPipeline`; PLADIS goes on the UNet's cross-attention, and on the
ControlNet's too with `pladis_controlnet=True`.
"""

from __future__ import annotations

from typing import Any

from diffusers import StableDiffusionXLControlNetPAGPipeline

from .guidance import CONTROLNET_PIPELINE_ARGUMENTS, PerturbedGuidanceMixin, accepts_guidance
from .saving import SavesAsStockPipeline


class PLADISStableDiffusionXLControlNetPipeline(
    SavesAsStockPipeline, PerturbedGuidanceMixin, StableDiffusionXLControlNetPAGPipeline
):
    """SDXL ControlNet with PLADIS: `pipe(prompt, image=depth, seg_scale=3.0, pladis_scale=3.0)`.

    With `pag_scale=0`, `seg_scale=0` and `pladis_scale=0` (the defaults) it gives the stock
    `StableDiffusionXLControlNetPipeline`'s images (that pipeline's `guess_mode` is not offered).
    """

    @accepts_guidance(CONTROLNET_PIPELINE_ARGUMENTS)
    def __call__(self, guidance: dict[str, Any], *args: Any, **kwargs: Any):
        """Call `StableDiffusionXLControlNetPAGPipeline.__call__` with the chosen guidance.

        The guidance and PLADIS arguments are `PLADISStableDiffusionXLSEGPipeline.__call__`'s (PAG and
        SEG act on the UNet's self-attention) and `pladis_controlnet`; other arguments are the parent's.
        """
        with self._perturbed_guidance(guidance) as perturbed:
            return super().__call__(*args, **perturbed, **kwargs)
