"""The tiny pipelines of each model family PLADIS supports, and how the model and compatibility tests run them.

Every pipeline is built in memory from config (random weights, the real diffusers classes) by
`scripts/dev/build_tiny_assets.py`; these helpers add the per-family call options and a way to see which
processors were in place while the denoiser ran.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import torch

from scripts.dev.build_tiny_assets import build_tiny_pixart_sigma, build_tiny_sana, build_tiny_sd, build_tiny_sd3
from tests.tiny import run_pipe

BUILDERS: dict[str, Callable[[], object]] = {
    "sd15": lambda: build_tiny_sd("1.5"),
    "sd2": lambda: build_tiny_sd("2"),
    "sd3": lambda: build_tiny_sd3(dual_attention=False),
    "sd35": lambda: build_tiny_sd3(dual_attention=True),
    "pixart": build_tiny_pixart_sigma,
    "sana": build_tiny_sana,
}
# Short text (16 tokens), no aspect-ratio binning (it would upscale 64 px to the model's base size).
CALL_OPTIONS: dict[str, dict] = {
    "sd15": {},
    "sd2": {},
    "sd3": {"max_sequence_length": 16},
    "sd35": {"max_sequence_length": 16},
    "pixart": {"max_sequence_length": 16, "use_resolution_binning": False, "clean_caption": False},
    "sana": {"max_sequence_length": 16, "use_resolution_binning": False, "complex_human_instruction": None},
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and busy shared cores make 2 spinning threads crawl."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build(family: str):
    """A fresh tiny pipeline of `family` (deterministic weights), progress bar off."""
    pipe = BUILDERS[family]()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_family(pipe, family: str, **kwargs):
    """`run_pipe` (2 steps, 64×64, fixed seed, numpy images) with the family's call options."""
    return run_pipe(pipe, **{**CALL_OPTIONS[family], **kwargs})


def denoiser(pipe) -> torch.nn.Module:
    return pipe.unet if getattr(pipe, "unet", None) is not None else pipe.transformer


@contextmanager
def processors_seen(model: torch.nn.Module) -> Iterator[dict]:
    """Yield a dict that, after the body, holds `model.attn_processors` as they were at its first forward call."""
    seen: dict = {}

    def record(module, args, kwargs) -> None:
        if not seen:
            seen.update(module.attn_processors)

    handle = model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        yield seen
    finally:
        handle.remove()


def layers_of_type(processors: dict, processor_type: type) -> set[str]:
    """Names (without `.processor`) of the layers whose processor is exactly `processor_type`."""
    return {name[: -len(".processor")] for name, processor in processors.items() if type(processor) is processor_type}
