"""Installing attention processors for the length of a call, and putting the originals back.

`swapped_attn_processors` is the one install/restore mechanism of the project (PLADIS, SEG and
every pipeline use it); `apply_pladis` builds the PLADIS table for a pipeline's denoiser (U-Net,
SD3 / PixArt / SANA / FLUX transformer) with it, from `PLADIS_PROCESSORS` (stock processor → PLADIS).
"""

from __future__ import annotations

import re
from contextlib import ExitStack, contextmanager
from typing import Callable, Iterator

import torch
from diffusers.models.attention_processor import (
    Attention,
    AttnProcessor,
    AttnProcessor2_0,
    FusedAttnProcessor2_0,
    FusedJointAttnProcessor2_0,
    JointAttnProcessor2_0,
    SlicedAttnProcessor,
    XFormersAttnProcessor,
)
from diffusers.models.transformers.sana_transformer import SanaAttnProcessor2_0
from diffusers.models.transformers.transformer_flux import FluxAttention, FluxAttnProcessor
from diffusers.pipelines.pag.pag_utils import PAGMixin

from .flux_processor import PLADISFluxAttnProcessor, TextLength, recorded_text_length
from .processor import PLADISAttnProcessor
from .sana_processor import PLADISSanaAttnProcessor
from .sd3_processor import PLADISJointAttnProcessor
from .validation import check_flag, check_pladis_alpha, check_pladis_scale

_PROCESSOR_SUFFIX = ".processor"

# The PLADIS processor that replaces each stock processor of a text-attention layer. Processors that
# compute the same softmax attention another way get the same one: sliced attention (PLADIS bounds
# memory itself, one query chunk at a time), fused QKV (diffusers keeps the separate projections,
# which the PLADIS processors read), xformers. A PLADIS processor is replaced by one with the new λ, α.
PLADIS_PROCESSORS: dict[type, type] = {
    AttnProcessor2_0: PLADISAttnProcessor,
    AttnProcessor: PLADISAttnProcessor,
    SlicedAttnProcessor: PLADISAttnProcessor,
    FusedAttnProcessor2_0: PLADISAttnProcessor,
    XFormersAttnProcessor: PLADISAttnProcessor,
    PLADISAttnProcessor: PLADISAttnProcessor,
    SanaAttnProcessor2_0: PLADISSanaAttnProcessor,
    PLADISSanaAttnProcessor: PLADISSanaAttnProcessor,
    JointAttnProcessor2_0: PLADISJointAttnProcessor,
    FusedJointAttnProcessor2_0: PLADISJointAttnProcessor,
    PLADISJointAttnProcessor: PLADISJointAttnProcessor,
    FluxAttnProcessor: PLADISFluxAttnProcessor,
    PLADISFluxAttnProcessor: PLADISFluxAttnProcessor,
}

# Maps an attention module to the PLADIS processor it gets, or None to keep its own processor.
ProcessorFactory = Callable[[str, torch.nn.Module, float, float], object]


def attention_model(model: object) -> torch.nn.Module:
    """`model` (the module inside it if `torch.compile` wrapped it) when it is a diffusers model whose
    attention processors can be swapped; a `TypeError` naming its class otherwise."""
    model = getattr(model, "_orig_mod", model)
    if not isinstance(model, torch.nn.Module) or not all(
        hasattr(type(model), attribute) for attribute in ("attn_processors", "set_attn_processor")
    ):
        raise TypeError(
            f"PLADIS needs a diffusers model with attention processors (`attn_processors` / `set_attn_processor`), "
            f"got {type(model).__name__}; it supports U-Nets with cross-attention and SD3, PixArt, SANA and FLUX "
            "transformers"
        )
    return model


def attention_modules(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The attention modules of `model` by the names `model.attn_processors` uses (without `.processor`)."""
    model = attention_model(model)
    return {
        name[: -len(_PROCESSOR_SUFFIX)]: model.get_submodule(name[: -len(_PROCESSOR_SUFFIX)])
        for name in model.attn_processors
    }


@contextmanager
def swapped_attn_processors(model: torch.nn.Module, replacements: dict[str, object]) -> Iterator[None]:
    """Set `replacements` (layer name → processor) on `model`, and restore the exact previous
    processor objects on exit, also when the body raises. Unknown layer names raise `ValueError`."""
    model = attention_model(model)
    if not isinstance(replacements, dict) or not all(isinstance(name, str) for name in replacements):
        raise TypeError(f"replacements must be a dict of layer name -> processor, got {type(replacements).__name__}")
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


def is_text_attention(module: torch.nn.Module) -> bool:
    """Where PLADIS acts: cross-attention (U-Net, PixArt, SANA `attn2`) and joint text+image attention
    (SD3 `attn`, FLUX double-stream `attn`). Self-attention (SD3.5's `attn2` included) is never touched."""
    if isinstance(module, Attention):
        return module.is_cross_attention or module.added_kv_proj_dim is not None
    return isinstance(module, FluxAttention) and module.added_kv_proj_dim is not None


def pladis_processor_for(
    name: str, module: torch.nn.Module, pladis_scale: float, pladis_alpha: float, text_length: TextLength | None = None
) -> object:
    """The PLADIS processor replacing `module`'s stock processor (`PLADIS_PROCESSORS`).

    Any other processor (an IP-Adapter, a custom or third-party one) raises: replacing it would
    silently drop what it does, and keeping it would silently run without PLADIS.
    """
    processor_type = type(module.processor)
    pladis_type = PLADIS_PROCESSORS.get(processor_type)
    if pladis_type is None:
        stock = sorted(cls.__name__ for cls in PLADIS_PROCESSORS if not cls.__name__.startswith("PLADIS"))
        raise ValueError(
            f"PLADIS cannot replace {processor_type.__name__} on {name} (an IP-Adapter or custom processor would "
            f"be dropped); it replaces the stock processors {', '.join(stock)}: unload or reset that layer's processor"
        )
    if isinstance(module, Attention) and not getattr(module, "scale_qk", True):
        raise ValueError(f"PLADIS needs the standard 1/sqrt(head_dim) logit scale, but {name} has scale_qk=False")
    if pladis_type is PLADISFluxAttnProcessor:
        return PLADISFluxAttnProcessor(pladis_scale, pladis_alpha, text_length)
    return pladis_type(pladis_scale, pladis_alpha)


def cross_attention_pladis(name: str, module: torch.nn.Module, pladis_scale: float, pladis_alpha: float):
    """PLADIS for every text-attention layer (`is_text_attention`): cross-attention of U-Nets, ControlNets,
    PixArt and SANA, and the image-query × text-key block of SD3 and FLUX double-stream joint attention."""
    if is_text_attention(module):
        return pladis_processor_for(name, module, pladis_scale, pladis_alpha)
    return None


def with_single_stream_blocks(text_length: TextLength) -> ProcessorFactory:
    """`cross_attention_pladis` plus the FLUX single-stream blocks, which read the text length of
    each transformer call from `text_length` (see `recorded_text_length`)."""

    def factory(name: str, module: torch.nn.Module, pladis_scale: float, pladis_alpha: float):
        if is_single_stream_flux_attention(module):
            return pladis_processor_for(name, module, pladis_scale, pladis_alpha, text_length)
        return cross_attention_pladis(name, module, pladis_scale, pladis_alpha)

    return factory


def pladis_processors(
    model: torch.nn.Module, pladis_scale: float, pladis_alpha: float, factory: ProcessorFactory = cross_attention_pladis
) -> dict[str, object]:
    """One PLADIS processor per layer that `factory` selects; a model with none raises, naming its class."""
    pladis_scale = check_pladis_scale(pladis_scale)
    pladis_alpha = check_pladis_alpha(pladis_alpha)
    model = attention_model(model)
    table = {}
    for name, module in attention_modules(model).items():
        processor = factory(name, module, pladis_scale, pladis_alpha)
        if processor is not None:
            table[name] = processor
    if not table:
        raise ValueError(
            f"PLADIS found no cross-attention or joint text-image attention layer in {type(model).__name__}; it needs "
            "a denoiser with softmax text attention (SD 1.5 / 2.x / SDXL U-Nets, SD3, PixArt, SANA, FLUX)"
        )
    return table


def _denoiser(pipe: object) -> torch.nn.Module:
    """The pipeline's denoiser (`unet` or `transformer`), with a clear error when there is none."""
    for attribute in ("unet", "transformer"):
        model = getattr(pipe, attribute, None)
        if model is not None:
            return attention_model(model)
    raise TypeError(
        f"apply_pladis needs a diffusers pipeline with a `unet` or `transformer`, got {type(pipe).__name__}"
    )


def check_pag_leaves_pladis_layers(pipe: object, model: torch.nn.Module, table: dict[str, object]) -> None:
    """Raise when `pipe` is a diffusers PAG pipeline whose PAG layers include layers PLADIS needs.

    PAG gives its layers its own processors during the call (`PAGMixin`: self-attention modules
    whose name matches a `pag_applied_layers` pattern). In U-Nets, PixArt and SANA those are `attn1`
    and PLADIS is on `attn2`; SD3's joint attention is both, and PAG would silently replace PLADIS there.
    """
    patterns = getattr(pipe, "pag_applied_layers", None) if isinstance(pipe, PAGMixin) else None
    if not patterns:
        return
    modules = attention_modules(model)
    taken = sorted(
        name for name in table
        if isinstance(modules[name], Attention) and not modules[name].is_cross_attention
        and any(re.search(pattern, name) for pattern in patterns)
    )
    if taken:
        raise ValueError(
            f"PAG on {type(pipe).__name__} replaces the processors of {taken[:3]} during the call, the joint "
            "text-image attention PLADIS acts on; PLADIS with PAG works where PAG's layers are self-attention "
            "(SDXL, SD 1.5, PixArt, SANA). For PLADIS here, load the pipeline without PAG (e.g. "
            "StableDiffusion3Pipeline.from_pipe(pipe)), or set pag_applied_layers to layers PLADIS does not use"
        )


@contextmanager
def apply_pladis(
    pipe: object,
    pladis_scale: float,
    pladis_alpha: float = 1.5,
    *,
    pladis_controlnet: bool = False,
    pladis_single_blocks: bool = False,
) -> Iterator[None]:
    """Run the body with PLADIS on every text-attention layer of `pipe`'s denoiser.

    U-Nets, PixArt, SANA: every cross-attention layer (`attn2`). SD3 / SD3.5 and FLUX: the
    image-query × text-key block of every joint attention (image tokens first in SD3, text first
    in FLUX); with `pladis_single_blocks=True` also FLUX's single-stream blocks (their text length
    is recorded from each transformer call). λ = 0 leaves the model untouched (stock attention,
    bit-identical output). With `pladis_controlnet=True`, the pipeline's ControlNet(s) too.
    Everything is checked before anything changes; the exact previous processors are restored (and
    hooks removed) on exit, also when the body raises. A model without such layers, a layer holding
    a processor PLADIS does not know (e.g. an IP-Adapter), or PAG layers on the layers PLADIS needs
    (SD3's PAG pipelines) raise instead of running without PLADIS.
    """
    pladis_scale = check_pladis_scale(pladis_scale)
    pladis_alpha = check_pladis_alpha(pladis_alpha)
    pladis_controlnet = check_flag("pladis_controlnet", pladis_controlnet)
    pladis_single_blocks = check_flag("pladis_single_blocks", pladis_single_blocks)
    models = [_denoiser(pipe)]
    if pladis_controlnet:
        controlnet = getattr(pipe, "controlnet", None)
        if controlnet is None:
            raise ValueError(f"pladis_controlnet=True but {type(pipe).__name__} has no controlnet")
        models += [attention_model(net) for net in getattr(controlnet, "nets", [controlnet])]
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
    check_pag_leaves_pladis_layers(pipe, models[0], tables[0])
    with ExitStack() as stack:
        for model, table, text_length in zip(models, tables, text_lengths):
            if pladis_single_blocks:
                stack.enter_context(recorded_text_length(model, text_length))
            stack.enter_context(swapped_attn_processors(model, table))
        yield
