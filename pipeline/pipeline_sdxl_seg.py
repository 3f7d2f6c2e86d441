"""`PLADISStableDiffusionXLSEGPipeline`: SDXL with CFG, PAG or SEG guidance, each combinable with PLADIS.

It is diffusers' `StableDiffusionXLPAGPipeline` (its loop and guidance formula) with SEG as a second
perturbed-attention processor pair, PLADIS on cross-attention, and the pipeline state restored after
every call, also when it raises. Also importable here under the reference's name
`PLADISStableDiffusionXLPipeline`.
"""

from __future__ import annotations

from typing import Any

from diffusers import StableDiffusionXLPAGPipeline

from .guidance import SEG_INFINITE_BLUR, PerturbedGuidanceMixin
from .saving import SavesAsStockPipeline


class PLADISStableDiffusionXLSEGPipeline(SavesAsStockPipeline, PerturbedGuidanceMixin, StableDiffusionXLPAGPipeline):
    """SDXL with CFG, PAG or SEG, each with PLADIS: `pipe(prompt, seg_scale=3.0, pladis_scale=2.0)`.

    With `pag_scale=0` and `seg_scale=0` (the defaults) it is plain CFG, as `StableDiffusionXLPipeline`.
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
        **kwargs: Any,
    ):
        """Call `StableDiffusionXLPAGPipeline.__call__` with the chosen guidance; other arguments are its own.

        pag_scale: PAG strength s (0 = off); the perturbed self-attention is the identity.
        pag_adaptive_scale: PAG's timestep-adaptive decay (PAG only).
        pag_applied_layers: PAG layer ids (regexes on module names: "mid", "down_blocks.2",
            "up_blocks.0.attentions.1"); None = the pipeline's own, `["mid"]` unless set otherwise.
        seg_scale: SEG strength s (0 = off); cannot be combined with `pag_scale > 0`.
        seg_blur_sigma: σ of the query blur; above 9999 (the default) the query becomes its mean.
        seg_applied_layers: SEG layer ids, same syntax; None = `["mid"]`.
        pladis_scale: λ in `softmax + λ·(entmax_α − softmax)` on every cross-attention layer; 0 = off.
        pladis_alpha: α of the sparse map, in (1, 2]; 1.5 = entmax15 (default), 2.0 = sparsemax.
        """
        with self._perturbed_guidance(
            pag_scale=pag_scale, pag_adaptive_scale=pag_adaptive_scale, pag_applied_layers=pag_applied_layers,
            seg_scale=seg_scale, seg_blur_sigma=seg_blur_sigma, seg_applied_layers=seg_applied_layers,
            pladis_scale=pladis_scale, pladis_alpha=pladis_alpha,
        ) as perturbed:
            return super().__call__(*args, **perturbed, **kwargs)


# The reference repository's name for this pipeline (`from pipeline_sdxl_seg import PLADISStableDiffusionXLPipeline`).
PLADISStableDiffusionXLPipeline = PLADISStableDiffusionXLSEGPipeline
