"""`PLADISStableDiffusionXLPipeline`: diffusers' SDXL pipeline with the PLADIS keywords.

Everything else (CFG, FreeU, LoRA, IP-Adapter, schedulers, latents, timesteps, callbacks) is the parent's:
the subclass only installs PLADIS processors for the call and restores them afterwards.
"""

from __future__ import annotations

from typing import Any

from diffusers import StableDiffusionXLPipeline

from .call_signature import pipeline_call
from .guidance import SDXL, pladis_for_call
from .saving import SavesAsStockPipeline


class PLADISStableDiffusionXLPipeline(SavesAsStockPipeline, StableDiffusionXLPipeline):
    """SDXL with PLADIS: `pipe(prompt, pladis_scale=2.0)`; `pladis_scale=0` is the stock pipeline."""

    @pipeline_call(SDXL)
    def __call__(self, keywords: dict[str, Any], arguments: dict[str, Any]):
        """`StableDiffusionXLPipeline.__call__` with PLADIS on every UNet cross-attention layer."""
        with pladis_for_call(self, keywords):
            return super().__call__(**arguments)
