"""Tiny modular pipelines (diffusers' modular blocks) from the components of the tiny classic pipelines, for
the guider and composition tests: SDXL (a U-Net), SD3 and FLUX.2 [klein] base (joint-attention transformers)."""

from __future__ import annotations

import numpy as np
import torch
from diffusers import ClassifierFreeGuidance, StableDiffusionXLPipeline
from diffusers.modular_pipelines import Flux2KleinBaseAutoBlocks, StableDiffusionXLAutoBlocks

from scripts.cli.assets import TINY_SDXL
from tests.tiny_pipelines import build_tiny_flux2_klein

PROMPT = "a photo of a red cube"


def modular_from(blocks, classic) -> object:
    """`blocks`' pipeline holding the components of the classic pipeline `classic`, with CFG 5 as its guider."""
    pipe = blocks.init_pipeline()
    components = {name: value for name, value in classic.components.items() if value is not None}
    pipe.update_components(**components, guider=ClassifierFreeGuidance(guidance_scale=5.0))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def modular_sdxl():
    return modular_from(StableDiffusionXLAutoBlocks(), StableDiffusionXLPipeline.from_pretrained(TINY_SDXL))


def modular_flux2_klein():
    return modular_from(Flux2KleinBaseAutoBlocks(), build_tiny_flux2_klein())


# The call options of each (2-4 steps, tiny images, fixed seed).
SDXL_CALL = {"height": 64, "width": 64}
FLUX2_CALL = {"height": 32, "width": 32, "max_sequence_length": 16, "text_encoder_out_layers": (1, 2, 2)}


def run_modular(pipe, steps: int = 4, seed: int = 0, **options) -> np.ndarray:
    """One image from a modular pipeline as a numpy array."""
    return pipe(
        prompt=PROMPT,
        num_inference_steps=steps,
        generator=torch.Generator("cpu").manual_seed(seed),
        output="images",
        output_type="np",
        **options,
    )
