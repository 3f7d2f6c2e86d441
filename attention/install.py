"""Installing attention processors for the length of a call, and putting the originals back.

`swapped_attn_processors` is the one install/restore mechanism of the project (PLADIS, SEG and
every pipeline use it); `apply_pladis` builds the PLADIS table for a pipeline's denoiser (U-Net or
FLUX transformer) with it.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Callable, Iterator

import torch
from diffusers.models.attention_processor import Attention
from diffusers.models.transformers.transformer_flux import FluxAttention, FluxAttnProcessor

from .flux_processor import PLADISFluxAttnProcessor, TextLength, recorded_text_length
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


def is_single_stream_flux_attention(module: torch.nn.Module) -> bool:
    """A FLUX single-stream block's attention: joint `[txt ; img]` input, no separate text projections."""
    return isinstance(module, FluxAttention) and module.added_kv_proj_dim is None


def _flux_pladis(name: str, module: FluxAttention, processor: PLADISFluxAttnProcessor) -> PLADISFluxAttnProcessor:
    """`processor`, if the layer runs plain FLUX attention: replacing e.g. an IP-Adapter processor
    would silently drop the adapter, so that raises instead."""
    if not isinstance(module.processor, (FluxAttnProcessor, PLADISFluxAttnProcessor)):
        raise ValueError(f"PLADIS cannot replace {type(module.processor).__name__} on {name} (FLUX IP-Adapter?)")
    return processor


def cross_attention_pladis(name: str, module: torch.nn.Module, pladis_scale: float, pladis_alpha: float):
    """PLADIS for the cross-attention layers of a U-Net or ControlNet (self-attention is never
    touched) and for FLUX double-stream joint attention (the image-query × text-key block)."""
    if isinstance(module, Attention) and module.is_cross_attention:
        return PLADISAttnProcessor(pladis_scale, pladis_alpha)
    if isinstance(module, FluxAttention) and module.added_kv_proj_dim is not None:
        return _flux_pladis(name, module, PLADISFluxAttnProcessor(pladis_scale, pladis_alpha))
    return None


def with_single_stream_blocks(text_length: TextLength) -> ProcessorFactory:
    """`cross_attention_pladis` plus the FLUX single-stream blocks, which read the text length of
    each transformer call from `text_length` (see `recorded_text_length`)."""

    def factory(name: str, module: torch.nn.Module, pladis_scale: float, pladis_alpha: float):
        if is_single_stream_flux_attention(module):
            return _flux_pladis(name, module, PLADISFluxAttnProcessor(pladis_scale, pladis_alpha, text_length))
        return cross_attention_pladis(name, module, pladis_scale, pladis_alpha)

    return factory


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
    pipe: object,
    pladis_scale: float,
    pladis_alpha: float = 1.5,
    *,
    pladis_controlnet: bool = False,
    pladis_single_blocks: bool = False,
) -> Iterator[None]:
    """Run the body with PLADIS on every cross-attention layer of `pipe`'s denoiser.

    U-Nets: every cross-attention layer (`attn2`). FLUX transformers: the image-query × text-key
    block of every double-stream block's joint attention; with `pladis_single_blocks=True` the
    single-stream blocks too (their text length is recorded from each transformer call).
    λ = 0 leaves the model untouched (stock fused attention, bit-identical output). With
    `pladis_controlnet=True`, the pipeline's ControlNet gets PLADIS too. The exact previous
    processors are restored (and hooks removed) on exit, also when the body raises.
    """
    pladis_scale = check_pladis_scale(pladis_scale)
    pladis_alpha = check_pladis_alpha(pladis_alpha)
    if not isinstance(pladis_single_blocks, bool):
        raise TypeError(
            f"pladis_single_blocks must be a bool, got {type(pladis_single_blocks).__name__}: {pladis_single_blocks!r}"
        )
    models = [_denoiser(pipe)]
    if pladis_controlnet:
        controlnet = getattr(pipe, "controlnet", None)
        if controlnet is None:
            raise ValueError(f"pladis_controlnet=True but {type(pipe).__name__} has no controlnet")
        models += list(getattr(controlnet, "nets", [controlnet]))
    if pladis_single_blocks and not any(map(is_single_stream_flux_attention, attention_modules(models[0]).values())):
        raise ValueError(f"pladis_single_blocks=True but {type(models[0]).__name__} has no FLUX single-stream block")
    if pladis_scale == 0.0:
        yield
        return
    text_lengths = [TextLength() for _ in models]
    factories = [with_single_stream_blocks(length) if pladis_single_blocks else cross_attention_pladis
                 for length in text_lengths]
    tables = [pladis_processors(model, pladis_scale, pladis_alpha, factory)
              for model, factory in zip(models, factories)]
    with ExitStack() as stack:
        for model, table, text_length in zip(models, tables, text_lengths):
            if pladis_single_blocks:
                stack.enter_context(recorded_text_length(model, text_length))
            stack.enter_context(swapped_attn_processors(model, table))
        yield

