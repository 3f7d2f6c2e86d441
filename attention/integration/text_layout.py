"""Where the text keys of a layer's attention call sit, and how long the text of the current denoiser call is.

A layer's keys are all text (cross-attention), a joint sequence with the text first (FLUX `[txt ; img]`) or last
(SD3 `[img ; txt]`), or per-sample packed `[img ; txt ; pad]` (Z-Image). Layers not told their text length (FLUX
single-stream blocks get `[txt ; img]` already concatenated) read it from a `TextLength` recorded from each
denoiser call: `apply_pladis` records it per call itself, `recorded_text_length` does it for processors with
fixed settings.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

CROSS, LEADING, TRAILING, PACKED = "cross", "leading", "trailing", "packed"
TEXT_KEYS = (CROSS, LEADING, TRAILING, PACKED)


@dataclass
class TextLength:
    """What the current denoiser call says about its text, for layers that are not told it.

    `tokens`: text tokens of a joint sequence (FLUX single-stream blocks get `[txt ; img]` already
    concatenated). `segments`: per sample `(image_tokens, text_tokens)` of a packed sequence `[img ; txt ; pad]`
    (Z-Image). Written from each denoiser call by the family's recorder (see `recorded_text_length`).
    """

    tokens: int | None = None
    segments: tuple[tuple[int, int], ...] | None = None


def denoiser_argument(args: tuple, kwargs: dict, name: str, position: int):
    """The denoiser-call argument `name`, given by keyword or at `position`; None when absent."""
    return kwargs.get(name, args[position] if len(args) > position else None)


def joint_text_tokens(args: tuple, kwargs: dict) -> TextLength:
    """FLUX-style denoiser call: the text length is `encoder_hidden_states.shape[1]` (second argument)."""
    states = denoiser_argument(args, kwargs, "encoder_hidden_states", 1)
    return TextLength(tokens=None if states is None else int(states.shape[1]))


@contextmanager
def recorded_text_length(transformer: torch.nn.Module, text_length: TextLength) -> Iterator[TextLength]:
    """Keep `text_length.tokens` up to date with a forward pre-hook on `transformer` that reads
    `encoder_hidden_states.shape[1]` on every call; the hook is removed on exit, also on errors."""

    def record(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        text_length.tokens = joint_text_tokens(args, kwargs).tokens

    handle = transformer.register_forward_pre_hook(record, with_kwargs=True)
    try:
        yield text_length
    finally:
        handle.remove()
        text_length.tokens = None
