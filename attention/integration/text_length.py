"""The text length of FLUX-style joint sequences, recorded from each transformer call.

FLUX single-stream blocks get `[txt ; img]` already concatenated and are never told the text length;
`recorded_text_length` keeps a `TextLength` up to date from the transformer's `encoder_hidden_states`
(for processors with fixed settings; `apply_pladis` records it per call itself, see `attention.integration.install`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from .call_context import TextLength
from .diffusers_families import joint_text_tokens


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
