"""`PLADISStableDiffusionXLSEGPipeline`: SDXL with CFG, PAG or SEG guidance, each combinable with PLADIS.

It is diffusers' `StableDiffusionXLPAGPipeline` (its loop and guidance formula) with SEG as a second
perturbed-attention processor pair, PLADIS on cross-attention, and the pipeline state restored after
every call, also when it raises. Also importable here under the reference's name
`PLADISStableDiffusionXLPipeline`.
"""

from __future__ import annotations

from typing import Any

from diffusers import StableDiffusionXLPAGPipeline

from .call_signature import pipeline_call
from .guidance import SDXL_SEG, PerturbedGuidanceMixin
from .saving import SavesAsStockPipeline


class PLADISStableDiffusionXLSEGPipeline(SavesAsStockPipeline, PerturbedGuidanceMixin, StableDiffusionXLPAGPipeline):
    """SDXL with CFG, PAG or SEG, each with PLADIS: `pipe(prompt, seg_scale=3.0, pladis_scale=2.0)`.

    With `pag_scale=0` and `seg_scale=0` (the defaults) it is plain CFG, as `StableDiffusionXLPipeline`.
    """

    @pipeline_call(SDXL_SEG)
    def __call__(self, keywords: dict[str, Any], arguments: dict[str, Any]):
        """`StableDiffusionXLPAGPipeline.__call__` with CFG, PAG or SEG on the UNet's self-attention and PLADIS on
        its cross-attention."""
        with self._perturbed_guidance(keywords) as perturbed:
            return super().__call__(**arguments, **perturbed)


# The reference repository's name for this pipeline (`from pipeline_sdxl_seg import PLADISStableDiffusionXLPipeline`).
PLADISStableDiffusionXLPipeline = PLADISStableDiffusionXLSEGPipeline
