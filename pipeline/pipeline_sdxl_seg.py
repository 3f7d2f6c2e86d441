"""`PLADISStableDiffusionXLSEGPipeline`: SDXL with CFG, PAG or SEG guidance, each combinable with PLADIS.

It is diffusers' `StableDiffusionXLPAGPipeline` (its loop and guidance formula) with SEG as a second
perturbed-attention processor pair, PLADIS on cross-attention, and the pipeline state restored after
every call, also when it raises. Also importable here under the reference's name
`PLADISStableDiffusionXLPipeline`.
"""

from __future__ import annotations

from typing import Any

from diffusers import StableDiffusionXLPAGPipeline

from .guidance import SEG_PIPELINE_ARGUMENTS, PerturbedGuidanceMixin, accepts_guidance
from .saving import SavesAsStockPipeline


class PLADISStableDiffusionXLSEGPipeline(SavesAsStockPipeline, PerturbedGuidanceMixin, StableDiffusionXLPAGPipeline):
    """SDXL with CFG, PAG or SEG, each with PLADIS: `pipe(prompt, seg_scale=3.0, pladis_scale=2.0)`.

    With `pag_scale=0` and `seg_scale=0` (the defaults) it is plain CFG, as `StableDiffusionXLPipeline`.
    """

    @accepts_guidance(SEG_PIPELINE_ARGUMENTS)
    def __call__(self, guidance: dict[str, Any], *args: Any, **kwargs: Any):
        """Call `StableDiffusionXLPAGPipeline.__call__` with the chosen guidance; other arguments are its own."""
        with self._perturbed_guidance(guidance) as perturbed:
            return super().__call__(*args, **perturbed, **kwargs)


# The reference repository's name for this pipeline (`from pipeline_sdxl_seg import PLADISStableDiffusionXLPipeline`).
PLADISStableDiffusionXLPipeline = PLADISStableDiffusionXLSEGPipeline
