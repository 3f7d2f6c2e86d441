"""Which attention modules of which model family see text, and how PLADIS acts on them: one record a family.

A `Family` names its denoiser classes and its `TextAttention` kinds: which modules (a predicate on name
and module), where their text keys sit (`attention_calls`: all keys, a leading or trailing slice of a
joint sequence, per-sample packed positions), which stock processors they may hold (and whose code runs
with PLADIS: a sliced or xformers original runs as the SDPA processor), whether they are on by default,
and, where a layer is not told its text length, how it is recorded from each denoiser call.
Adding a family is adding a record here (and its tests).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from diffusers.models.attention_processor import (
    Attention,
    AttnProcessor,
    AttnProcessor2_0,
    FusedAttnProcessor2_0,
    FusedJointAttnProcessor2_0,
    IPAdapterAttnProcessor,
    IPAdapterAttnProcessor2_0,
    IPAdapterXFormersAttnProcessor,
    JointAttnProcessor2_0,
    SD3IPAdapterJointAttnProcessor2_0,
    SlicedAttnProcessor,
    XFormersAttnProcessor,
)
from diffusers.models.transformers.sana_transformer import SanaAttnProcessor2_0
from diffusers.models.transformers.transformer_cogview4 import CogView4AttnProcessor
from diffusers.models.transformers.transformer_flux import FluxAttention, FluxAttnProcessor, FluxIPAdapterAttnProcessor
from diffusers.models.transformers.transformer_flux2 import (
    Flux2Attention,
    Flux2AttnProcessor,
    Flux2ParallelSelfAttention,
    Flux2ParallelSelfAttnProcessor,
)
from diffusers.models.transformers.transformer_hunyuan_video import HunyuanVideoAttnProcessor2_0
from diffusers.models.transformers.transformer_hunyuanimage import HunyuanImageAttnProcessor
from diffusers.models.transformers.transformer_ltx import LTXAttention, LTXVideoAttnProcessor
from diffusers.models.transformers.transformer_qwenimage import QwenDoubleStreamAttnProcessor2_0
from diffusers.models.transformers.transformer_sana_video import SanaAttnProcessor2_0 as SanaVideoAttnProcessor2_0
from diffusers.models.transformers.transformer_wan import WanAttention, WanAttnProcessor
from diffusers.models.transformers.transformer_z_image import SEQ_MULTI_OF, ZSingleStreamAttnProcessor

from .call_context import CROSS, LEADING, PACKED, TRAILING, TextLength

Recorder = Callable[[tuple, dict], TextLength]


@dataclass(frozen=True)
class TextAttention:
    """One kind of text-seeing attention module in a family, and how PLADIS acts on it.

    `processors` maps each stock processor the module may hold to the stock processor whose code runs
    with PLADIS (a processor with weights, an IP-Adapter's, runs that code on its own weights). `optional`
    kinds are on only with `pladis_single_blocks=True`. A layer call attends to the text in one attention call:
    `image_context_calls` counts the calls before it whose keys are not text (Wan's image context); the calls
    after it (an IP-Adapter's image prompt) are not on text either. Both stay dense.
    """

    blocks: str
    selects: Callable[[str, torch.nn.Module], bool]
    text_keys: str
    processors: Mapping[type, type]
    optional: bool = False
    image_context_calls: Callable[[torch.nn.Module], int] | None = None


@dataclass(frozen=True)
class Family:
    """A model family: its denoiser classes (by name; empty = any model built from diffusers' `Attention`),
    its text-attention kinds, and the recorder of per-call text layout for layers not told it."""

    name: str
    denoisers: tuple[str, ...]
    text_attention: tuple[TextAttention, ...]
    record: Recorder | None = None


def _argument(args: tuple, kwargs: dict, name: str, position: int):
    return kwargs.get(name, args[position] if len(args) > position else None)


def joint_text_tokens(args: tuple, kwargs: dict) -> TextLength:
    """FLUX-style denoiser call: the text length is `encoder_hidden_states.shape[1]` (second argument)."""
    states = _argument(args, kwargs, "encoder_hidden_states", 1)
    return TextLength(tokens=None if states is None else int(states.shape[1]))


def _multiple_of_packing(tokens: int) -> int:
    return -(-tokens // SEQ_MULTI_OF) * SEQ_MULTI_OF


def z_image_segments(args: tuple, kwargs: dict) -> TextLength:
    """Z-Image call: per sample `(image tokens, caption tokens)` of its unified `[img ; cap]` sequence, each
    padded to a multiple of `SEQ_MULTI_OF` as `ZImageTransformer2DModel.patchify_and_embed` pads them."""
    images, captions = _argument(args, kwargs, "x", 0), _argument(args, kwargs, "cap_feats", 2)
    if images is None or captions is None:
        return TextLength()
    if isinstance(images[0], list):
        raise ValueError(
            "PLADIS on ZImageTransformer2DModel supports the text-to-image mode, not the omni mode "
            "(lists of condition images)"
        )
    patch, frame_patch = kwargs.get("patch_size", 2), kwargs.get("f_patch_size", 1)
    segments = tuple(
        (
            _multiple_of_packing(
                (image.shape[1] // frame_patch) * (image.shape[2] // patch) * (image.shape[3] // patch)
            ),
            _multiple_of_packing(len(caption)),
        )
        for image, caption in zip(images, captions, strict=True)
    )
    return TextLength(segments=segments)


def _is_cross_attention(name: str, module: torch.nn.Module) -> bool:
    return isinstance(module, Attention) and module.is_cross_attention


def _is_joint_attention(name: str, module: torch.nn.Module) -> bool:
    return isinstance(module, Attention) and not module.is_cross_attention and module.added_kv_proj_dim is not None


def _of_type(module_type: type, *, with_text_projections: bool | None = None) -> Callable[[str, torch.nn.Module], bool]:
    def selects(name: str, module: torch.nn.Module) -> bool:
        if not isinstance(module, module_type):
            return False
        return with_text_projections is None or (module.added_kv_proj_dim is not None) == with_text_projections

    return selects


def _named(suffix: str, module_type: type = torch.nn.Module) -> Callable[[str, torch.nn.Module], bool]:
    return lambda name, module: isinstance(module, module_type) and name.endswith(suffix)


def _in_blocks(prefix: str, module_type: type = torch.nn.Module) -> Callable[[str, torch.nn.Module], bool]:
    return lambda name, module: isinstance(module, module_type) and name.startswith(prefix)


def _wan_image_context(attn: torch.nn.Module) -> int:
    """Wan image-to-video cross-attention attends to the image context (`add_k_proj`) before the text."""
    return 0 if getattr(attn, "add_k_proj", None) is None else 1


# Processors computing the same softmax attention as `AttnProcessor2_0` (sliced: PLADIS bounds memory itself;
# fused QKV: diffusers keeps the separate projections, which the SDPA processor reads; xformers; the classic one).
_SDPA_LIKE = {
    processor: AttnProcessor2_0
    for processor in (
        AttnProcessor2_0,
        AttnProcessor,
        SlicedAttnProcessor,
        FusedAttnProcessor2_0,
        XFormersAttnProcessor,
    )
}
# IP-Adapter processors of the U-Nets (`load_ip_adapter`): the text, then each image prompt; the classic and xformers
# ones hold the same weights as the SDPA one, whose code runs on them.
_IP_ADAPTER = {
    processor: IPAdapterAttnProcessor2_0
    for processor in (IPAdapterAttnProcessor2_0, IPAdapterAttnProcessor, IPAdapterXFormersAttnProcessor)
}

ATTENTION_MODULES = Family(
    "diffusers Attention (SD 1.5/2.x/SDXL U-Nets and ControlNets, PixArt, SANA, SD3/3.5)",
    (),
    (
        TextAttention(
            "every cross-attention (attn2)",
            _is_cross_attention,
            CROSS,
            {**_SDPA_LIKE, **_IP_ADAPTER, SanaAttnProcessor2_0: SanaAttnProcessor2_0},
        ),
        TextAttention(
            "joint attention, text last (SD3)",
            _is_joint_attention,
            TRAILING,
            {
                JointAttnProcessor2_0: JointAttnProcessor2_0,
                FusedJointAttnProcessor2_0: JointAttnProcessor2_0,
                SD3IPAdapterJointAttnProcessor2_0: SD3IPAdapterJointAttnProcessor2_0,  # SD3.5's IP-Adapter
            },
        ),
    ),
)

_FLUX_DOUBLE = TextAttention(
    "double-stream blocks",
    _of_type(FluxAttention, with_text_projections=True),
    LEADING,
    {FluxAttnProcessor: FluxAttnProcessor, FluxIPAdapterAttnProcessor: FluxIPAdapterAttnProcessor},  # + IP-Adapter
)
_FLUX_SINGLE = TextAttention(
    "single-stream blocks",
    _of_type(FluxAttention, with_text_projections=False),
    LEADING,
    {FluxAttnProcessor: FluxAttnProcessor},
    optional=True,
)

FAMILIES: tuple[Family, ...] = (
    Family("FLUX.1", ("FluxTransformer2DModel",), (_FLUX_DOUBLE, _FLUX_SINGLE), joint_text_tokens),
    Family("Chroma", ("ChromaTransformer2DModel",), (_FLUX_DOUBLE, _FLUX_SINGLE), joint_text_tokens),
    Family(
        "FLUX.2",
        ("Flux2Transformer2DModel",),
        (
            TextAttention(
                "double-stream blocks", _of_type(Flux2Attention), LEADING, {Flux2AttnProcessor: Flux2AttnProcessor}
            ),
            TextAttention(
                "single-stream blocks",
                _of_type(Flux2ParallelSelfAttention),
                LEADING,
                {Flux2ParallelSelfAttnProcessor: Flux2ParallelSelfAttnProcessor},
                optional=True,
            ),
        ),
        joint_text_tokens,
    ),
    Family(
        "Qwen-Image",
        ("QwenImageTransformer2DModel",),
        (
            TextAttention(
                "joint blocks",
                _named(".attn", Attention),
                LEADING,
                {QwenDoubleStreamAttnProcessor2_0: QwenDoubleStreamAttnProcessor2_0},
            ),
        ),
    ),
    Family(
        "HunyuanVideo",
        ("HunyuanVideoTransformer3DModel",),
        (  # its token refiner's text self-attention stays
            TextAttention(
                "double-stream blocks",
                _in_blocks("transformer_blocks.", Attention),
                TRAILING,
                {HunyuanVideoAttnProcessor2_0: HunyuanVideoAttnProcessor2_0},
            ),
            TextAttention(
                "single-stream blocks",
                _in_blocks("single_transformer_blocks.", Attention),
                TRAILING,
                {HunyuanVideoAttnProcessor2_0: HunyuanVideoAttnProcessor2_0},
                optional=True,
            ),
        ),
    ),
    Family(
        "HunyuanImage 2.1",
        ("HunyuanImageTransformer2DModel",),
        (  # as HunyuanVideo
            TextAttention(
                "double-stream blocks",
                _in_blocks("transformer_blocks.", Attention),
                TRAILING,
                {HunyuanImageAttnProcessor: HunyuanImageAttnProcessor},
            ),
            TextAttention(
                "single-stream blocks",
                _in_blocks("single_transformer_blocks.", Attention),
                TRAILING,
                {HunyuanImageAttnProcessor: HunyuanImageAttnProcessor},
                optional=True,
            ),
        ),
    ),
    Family(
        "SANA-Video",
        ("SanaVideoTransformer3DModel",),
        (  # its linear self-attention has no softmax
            TextAttention(
                "every cross-attention (attn2)",
                _is_cross_attention,
                CROSS,
                {SanaVideoAttnProcessor2_0: SanaVideoAttnProcessor2_0},
            ),
        ),
    ),
    Family(
        "CogView4",
        ("CogView4Transformer2DModel",),
        (
            TextAttention(
                "joint blocks",
                _in_blocks("transformer_blocks.", Attention),
                LEADING,
                {CogView4AttnProcessor: CogView4AttnProcessor},
            ),
        ),
    ),
    Family(
        "Wan 2.x",
        ("WanTransformer3DModel",),
        (
            TextAttention(
                "every cross-attention (attn2)",
                _named(".attn2", WanAttention),
                CROSS,
                {WanAttnProcessor: WanAttnProcessor},
                image_context_calls=_wan_image_context,
            ),
        ),
    ),
    Family(
        "LTX-Video",
        ("LTXVideoTransformer3DModel",),
        (
            TextAttention(
                "every cross-attention (attn2)",
                _named(".attn2", LTXAttention),
                CROSS,
                {LTXVideoAttnProcessor: LTXVideoAttnProcessor},
            ),
        ),
    ),
    Family(
        "Z-Image",
        ("ZImageTransformer2DModel",),
        (
            TextAttention(
                "unified blocks (layers)",
                _in_blocks("layers.", Attention),
                PACKED,
                {ZSingleStreamAttnProcessor: ZSingleStreamAttnProcessor},
            ),
        ),
        z_image_segments,
    ),
)

SUPPORTED = "SD 1.5/2.x/SDXL U-Nets, SD3, PixArt, SANA, " + ", ".join(family.name for family in FAMILIES)


def family_of(model: torch.nn.Module) -> Family:
    """The record of `model`'s family: by denoiser class name, else the generic `Attention` record."""
    name = type(model).__name__
    for family in FAMILIES:
        if name in family.denoisers:
            return family
    return ATTENTION_MODULES
