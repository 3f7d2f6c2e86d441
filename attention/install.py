"""Installing attention processors for the length of a call, and putting the originals back.

`swapped_attn_processors` is the one install/restore mechanism of the project (PLADIS, SEG and
every pipeline use it); `apply_pladis` builds the PLADIS table for a pipeline's denoiser with it.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Callable, Iterator

import torch
from diffusers.models.attention_processor import Attention

from .processor import PLADISAttnProcessor
from .validation import check_pladis_alpha, check_pladis_scale

_PROCESSOR_SUFFIX = ".processor"

# Maps an attention module to the PLADIS processor it gets, or None to keep its own processor.
ProcessorFactory = Callable[[str, torch.nn.Module, float, float], object]


def attention_modules(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The attention modules of `model` by the names `model.attn_processors` uses (without `.processor`)."""
    return {
        name[: -len(_PROCESSOR_SUFFIX)]: model.get_submodule(name[: -len(_PROCESSOR_SUFFIX)])
        for name in model.attn_processors
    }


@contextmanager
def swapped_attn_processors(model: torch.nn.Module, replacements: dict[str, object]) -> Iterator[None]:
    """Set `replacements` (layer name → processor) on `model`, and restore the exact previous
    processor objects on exit, also when the body raises. Unknown layer names raise `ValueError`."""
    original = dict(model.attn_processors)
    unknown = sorted(set(replacements) - {name[: -len(_PROCESSOR_SUFFIX)] for name in original})
    if unknown:
        raise ValueError(f"unknown attention layer names for {type(model).__name__}: {unknown[:5]}")
    table = dict(original)
    table.update({f"{name}{_PROCESSOR_SUFFIX}": processor for name, processor in replacements.items()})
    model.set_attn_processor(table)  # set_attn_processor empties the dict it is given
    try:
        yield
    finally:
        model.set_attn_processor(dict(original))


def cross_attention_pladis(name: str, module: torch.nn.Module, pladis_scale: float, pladis_alpha: float):
    """PLADIS for the cross-attention layers of a U-Net or ControlNet; self-attention is never touched."""
    if isinstance(module, Attention) and module.is_cross_attention:
        return PLADISAttnProcessor(pladis_scale, pladis_alpha)
    return None


def pladis_processors(
    model: torch.nn.Module, pladis_scale: float, pladis_alpha: float, factory: ProcessorFactory = cross_attention_pladis
) -> dict[str, object]:
    """One PLADIS processor per layer that `factory` selects; raises if it selects none."""
    table = {}
    for name, module in attention_modules(model).items():
        processor = factory(name, module, pladis_scale, pladis_alpha)
        if processor is not None:
            table[name] = processor
    if not table:
        raise ValueError(
            f"PLADIS found no cross-attention layer in {type(model).__name__}; "
            "it needs a denoiser with softmax cross-attention"
        )
    return table


def _denoiser(pipe: object) -> torch.nn.Module:
    """The pipeline's denoiser (`unet` or `transformer`), with a clear error when there is none."""
    for attribute in ("unet", "transformer"):
        model = getattr(pipe, attribute, None)
        if model is not None:
            return model
    raise TypeError(f"apply_pladis needs a diffusers pipeline with a `unet` or `transformer`, got {type(pipe).__name__}")


@contextmanager
def apply_pladis(
    pipe: object, pladis_scale: float, pladis_alpha: float = 1.5, *, pladis_controlnet: bool = False
) -> Iterator[None]:
    """Run the body with PLADIS on every cross-attention layer of `pipe`'s denoiser.

    λ = 0 leaves the model untouched (stock fused attention, bit-identical output). With
    `pladis_controlnet=True`, the pipeline's ControlNet gets PLADIS too. The exact previous
    processors are restored on exit, also when the body raises.
    """
    pladis_scale = check_pladis_scale(pladis_scale)
    pladis_alpha = check_pladis_alpha(pladis_alpha)
    models = [_denoiser(pipe)]
    if pladis_controlnet:
        controlnet = getattr(pipe, "controlnet", None)
        if controlnet is None:
            raise ValueError(f"pladis_controlnet=True but {type(pipe).__name__} has no controlnet")
        models += list(getattr(controlnet, "nets", [controlnet]))
    if pladis_scale == 0.0:
        yield
        return
    tables = [pladis_processors(model, pladis_scale, pladis_alpha) for model in models]
    with ExitStack() as stack:
        for model, table in zip(models, tables):
            stack.enter_context(swapped_attn_processors(model, table))
        yield

