"""`PLADISFluxPipeline`: diffusers' FLUX pipeline with `pladis_scale` / `pladis_alpha` arguments.

Everything else (schnell or dev transformers, `guidance_scale`, `true_cfg_scale` with a negative
prompt, LoRA, `max_sequence_length`, schedulers, callbacks) is the parent's: the subclass only
installs PLADIS processors for the call and restores them afterwards.
"""

from __future__ import annotations

from typing import Any

from diffusers import FluxPipeline

from attention.install import apply_pladis

from .saving import SavesAsStockPipeline


class PLADISFluxPipeline(SavesAsStockPipeline, FluxPipeline):
    """FLUX with PLADIS: `pipe(prompt, pladis_scale=2.0)`; `pladis_scale=0` is the stock pipeline."""

    def __call__(
        self,
        *args: Any,
        pladis_scale: float = 0.0,
        pladis_alpha: float = 1.5,
        pladis_single_blocks: bool = False,
        **kwargs: Any,
    ):
        """Call `FluxPipeline.__call__` with PLADIS on the image-query × text-key block of the joint attention.

        pladis_scale: λ of the text-block rule `m·[λ·entmax_α + (1 − λ)·softmax]`; 0 disables PLADIS.
        pladis_alpha: α of the sparse map, in (1, 2]; 1.5 = entmax15 (default), 2.0 = sparsemax.
        pladis_single_blocks: also apply the rule in the single-stream blocks (default: double-stream
            blocks only; the authors' reference is unclear on single-stream blocks).
        """
        with apply_pladis(self, pladis_scale, pladis_alpha, pladis_single_blocks=pladis_single_blocks):
            return super().__call__(*args, **kwargs)
