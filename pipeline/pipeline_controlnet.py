"""`PLADISStableDiffusionXLControlNetPipeline`: SDXL ControlNet with CFG, PAG or SEG, each with PLADIS.

It is diffusers' `StableDiffusionXLControlNetPAGPipeline` with the same per-call options as
`PLADISStableDiffusionXLSEGPipeline`; PLADIS goes on the UNet's cross-attention, and on the
ControlNet's too with `pladis_controlnet=True`.
"""

from __future__ import annotations

from typing import Any

from diffusers import StableDiffusionXLControlNetPAGPipeline

from .call_signature import pipeline_call
from .guidance import CONTROLNET, PerturbedGuidanceMixin
from .saving import SavesAsStockPipeline


class PLADISStableDiffusionXLControlNetPipeline(
    SavesAsStockPipeline, PerturbedGuidanceMixin, StableDiffusionXLControlNetPAGPipeline
):
    """SDXL ControlNet with PLADIS: `pipe(prompt, image=depth, seg_scale=3.0, pladis_scale=3.0)`.

    With `pag_scale=0`, `seg_scale=0` and `pladis_scale=0` (the defaults) it gives the stock
    `StableDiffusionXLControlNetPipeline`'s images (that pipeline's `guess_mode` is not offered).
    """

    @pipeline_call(CONTROLNET)
    def __call__(self, keywords: dict[str, Any], arguments: dict[str, Any]):
        """`StableDiffusionXLControlNetPAGPipeline.__call__` with CFG, PAG or SEG on the UNet's self-attention and
        PLADIS on its cross-attention (and on the ControlNet's with `pladis_controlnet=True`)."""
        with self._perturbed_guidance(keywords) as perturbed:
            return super().__call__(**arguments, **perturbed)
