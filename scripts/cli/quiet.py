"""Library warnings the commands silence: known, harmless, and printed on every run, they would hide the lines
that matter.

- transformers without torchvision (a `[dev]` install has none: it comes with `[controlnet]`) warns, for each
  image-processor class diffusers' pipeline modules import (CLIP, SigLIP), that it falls back to the PIL
  version; the scripts' pictures do not depend on it.
- diffusers warns, per text encoder, when a LoRA file has no weights for it; the distilled-SDXL LoRAs (DMD2,
  SDXL-Lightning, Hyper-SD) change the U-Net only, so that is expected while they load.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

TORCHVISION_FALLBACK = "requires torchvision (not installed); falling back to"
TEXT_ENCODER_WITHOUT_LORA = "No LoRA keys associated to"
_TRANSFORMERS_IMPORTS = "transformers.utils.import_utils"  # the logger of the fallback warning
_DIFFUSERS_LORA_BASE = "diffusers.loaders.lora_base"  # the logger of the text-encoder LoRA warning


class DroppedMessage(logging.Filter):
    """A logging filter dropping the records whose message contains `fragment`."""

    def __init__(self, fragment: str) -> None:
        super().__init__()
        self.fragment = fragment

    def filter(self, record: logging.LogRecord) -> bool:
        return self.fragment not in record.getMessage()


def silence_torchvision_fallback() -> None:
    """Drop transformers' "requires torchvision (not installed); falling back to ...Pil" warnings (once per
    process: a second call adds nothing)."""
    logger = logging.getLogger(_TRANSFORMERS_IMPORTS)
    if not any(isinstance(item, DroppedMessage) and item.fragment == TORCHVISION_FALLBACK for item in logger.filters):
        logger.addFilter(DroppedMessage(TORCHVISION_FALLBACK))


@contextmanager
def text_encoder_lora_warnings_silenced() -> Iterator[None]:
    """Inside the block, diffusers' "No LoRA keys associated to <text encoder>" warnings are dropped (the
    U-Net's own "no keys" warning, a real problem, is another logger's and stays)."""
    logger = logging.getLogger(_DIFFUSERS_LORA_BASE)
    dropped = DroppedMessage(TEXT_ENCODER_WITHOUT_LORA)
    logger.addFilter(dropped)
    try:
        yield
    finally:
        logger.removeFilter(dropped)
