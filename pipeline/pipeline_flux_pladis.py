"""`PLADISFluxPipeline`: diffusers' FLUX pipeline with the PLADIS keywords.

Everything else (schnell or dev transformers, `guidance_scale`, `true_cfg_scale` with a negative
prompt, LoRA, IP-Adapter, `max_sequence_length`, schedulers, callbacks) is the parent's: the subclass only
installs PLADIS processors for the call and restores them afterwards.
"""

from __future__ import annotations

from typing import Any

from diffusers import FluxPipeline

from .call_signature import pipeline_call
from .guidance import FLUX, pladis_for_call
from .saving import SavesAsStockPipeline


class PLADISFluxPipeline(SavesAsStockPipeline, FluxPipeline):
    """FLUX with PLADIS: `pipe(prompt, pladis_scale=2.0)`; `pladis_scale=0` is the stock pipeline."""

    @pipeline_call(FLUX)
    def __call__(self, keywords: dict[str, Any], arguments: dict[str, Any]):
        """`FluxPipeline.__call__` with PLADIS on the image-query × text-key block of the joint attention, by the
        text-block rule `m·[λ·entmax_α + (1 − λ)·softmax]`."""
        with pladis_for_call(self, keywords):
            return super().__call__(**arguments)
