"""`PLADISStableDiffusionXLPipeline`: diffusers' SDXL pipeline with a `pladis_scale` argument.

Everything else (CFG, FreeU, LoRA, schedulers, latents, timesteps, callbacks) is the parent's:
the subclass only installs PLADIS processors for the call and restores them afterwards.
"""

from __future__ import annotations

from typing import Any

from diffusers import StableDiffusionXLPipeline

from attention.install import apply_pladis

from .saving import SavesAsStockPipeline


class PLADISStableDiffusionXLPipeline(SavesAsStockPipeline, StableDiffusionXLPipeline):
    """SDXL with PLADIS: `pipe(prompt, pladis_scale=2.0)`; `pladis_scale=0` is the stock pipeline."""

    def __call__(self, *args: Any, pladis_scale: float = 0.0, pladis_alpha: float = 1.5, **kwargs: Any):
        """Call `StableDiffusionXLPipeline.__call__` with PLADIS on every UNet cross-attention layer.

        pladis_scale: λ in `softmax + λ·(entmax_α − softmax)`; 0 disables PLADIS, 1.5–2.0 is typical.
        pladis_alpha: α of the sparse map, in (1, 2]; 1.5 = entmax15 (default), 2.0 = sparsemax.
        """
        with apply_pladis(self, pladis_scale, pladis_alpha):
            return super().__call__(*args, **kwargs)
