"""Which attention modules of which model family see text, and how PLADIS acts on them: one record a family.

A `Family` names its denoiser classes and its `TextAttention` kinds: which modules (a predicate on name
and module), where their text keys sit (`attention_calls`: all keys, a leading or trailing slice of a
joint sequence, per-sample packed positions), which stock processors they may hold (and whose code runs
with PLADIS: a sliced or xformers original runs as the SDPA processor), whether they are on by default,
and, where a layer is not told its text length, how it is recorded from each denoiser call.

The registry is open and lazy. `register_family` adds a record (the built-in ones below; a user's, for a model
PLADIS does not know yet); classes are named as "module:QualName" paths where importing them would cost, so
importing `attention` imports no diffusers transformer module, and a class renamed in diffusers breaks only its own
family. A model gets the record of the nearest class of its MRO that a family names (a subclass of a registered
denoiser gets its parent's record), else the generic `Attention` record. Adding a family is one `register_family`
call (and its tests). A record is checked when it is made (a wrong field raises naming it; a path's form is checked
then, its class imported only when used).
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

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

from ..validation import check_flag
from .text_layout import (
    CROSS,
    LEADING,
    PACKED,
    TEXT_KEYS,
    TRAILING,
    TextLength,
    denoiser_argument,
    joint_text_tokens,
)

Recorder = Callable[[tuple, dict], TextLength]


def class_path(cls: type) -> str:
    """`cls` as "module:QualName", the name the registry knows classes by."""
    return f"{cls.__module__}:{cls.__qualname__}"


_CLASS = 'a class or its "module:QualName" path (e.g. "diffusers.models.transformers.transformer_flux:FluxAttention")'


def _path(field: str, cls: object) -> str:
    """`cls`, a class or a "module:QualName" path, as its path (nothing imported); else an error naming `field`."""
    if isinstance(cls, type):
        return class_path(cls)
    if not isinstance(cls, str):
        raise TypeError(f"{field} must be {_CLASS}, got {type(cls).__name__}: {cls!r}")
    module, _, qualname = cls.partition(":")
    if cls.count(":") != 1 or not module.strip() or not qualname.strip():
        raise ValueError(f"{field} must be {_CLASS}: one ':' between the module and the class name, got {cls!r}")
    return cls


def _sequence(field: str, value: object, accepted: str) -> tuple:
    """`value`, a tuple or a list (a string is refused: it would be taken character by character), as a tuple."""
    if not isinstance(value, tuple | list):
        raise TypeError(f"{field} must be a tuple or list of {accepted}, got {type(value).__name__}: {value!r}")
    return tuple(value)


def _name(field: str, value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(
            f"{field} must be a non-empty str (its name in messages), got {type(value).__name__}: {value!r}"
        )
    if not value.strip():
        raise ValueError(f"{field} must be a non-empty str (its name in messages), got {value!r}")
    return value


def _callable(field: str, value: object, accepted: str, *, optional: bool = False) -> None:
    if not callable(value) and not (optional and value is None):
        raise TypeError(f"{field} must be {accepted}, got {type(value).__name__}: {value!r}")


def resolved(cls: type | str) -> type:
    """A class, or the class a "module:QualName" path names (its module imported now)."""
    if not isinstance(cls, str):
        return cls
    module, _, qualname = cls.partition(":")
    value = importlib.import_module(module)
    for part in qualname.split("."):
        value = getattr(value, part)
    return value


@dataclass(frozen=True)
class TextAttention:
    """One kind of text-seeing attention module in a family, and how PLADIS acts on it.

    `processors` maps each stock processor the module may hold to the stock processor whose code runs
    with PLADIS (a processor with weights, an IP-Adapter's, runs that code on its own weights); each is a class
    or its "module:QualName" path (kept as paths: `runs_as` imports nothing that is not imported already).
    `optional` kinds are on only with `pladis_single_blocks=True`. A layer call attends to the text in one attention
    call: `image_context_calls` counts the calls before it whose keys are not text (Wan's image context); the calls
    after it (an IP-Adapter's image prompt) are not on text either. Both stay dense.
    """

    blocks: str
    selects: Callable[[str, torch.nn.Module], bool]
    text_keys: str
    processors: Mapping[type | str, type | str]
    optional: bool = False
    image_context_calls: Callable[[torch.nn.Module], int] | None = None

    def __post_init__(self) -> None:
        _name("TextAttention.blocks", self.blocks)
        _callable("TextAttention.selects", self.selects, "a callable (name, module) -> bool")
        if not isinstance(self.text_keys, str):
            raise TypeError(
                f"TextAttention.text_keys must be one of {TEXT_KEYS}, got {type(self.text_keys).__name__}: "
                f"{self.text_keys!r}"
            )
        if self.text_keys not in TEXT_KEYS:
            raise ValueError(f"TextAttention.text_keys must be one of {TEXT_KEYS}, got {self.text_keys!r}")
        if not isinstance(self.processors, Mapping):
            raise TypeError(
                "TextAttention.processors must be a mapping {stock processor held: stock processor whose code runs}, "
                f"each {_CLASS}, got {type(self.processors).__name__}: {self.processors!r}"
            )
        paths = {
            _path("TextAttention.processors key", held): _path("TextAttention.processors value", runs)
            for held, runs in self.processors.items()
        }
        object.__setattr__(self, "processors", MappingProxyType(paths))
        check_flag("TextAttention.optional", self.optional)
        _callable(
            "TextAttention.image_context_calls",
            self.image_context_calls,
            "None or a callable (module) -> int",
            optional=True,
        )

    def runs_as(self, processor: object) -> type | None:
        """The stock processor whose code runs with PLADIS for a layer holding `processor` (None: not one of this
        kind's; a PLADIS processor set by hand runs its own stock code when this kind runs that code)."""
        path = self.processors.get(class_path(type(processor)))
        if path is None:
            stock_type = getattr(processor, "stock_type", None)  # a PLADIS processor (`processors.PLADISProcessor`)
            if stock_type is None or class_path(stock_type) not in self.processors.values():
                return None
            return stock_type
        return resolved(path)

    def processor_names(self) -> list[str]:
        """The class names of the stock processors this kind may hold, for messages."""
        return sorted({path.rpartition(":")[2] for path in self.processors})


@dataclass(frozen=True)
class Family:
    """A model family: its denoiser classes (classes or "module:QualName" paths, kept as paths; empty = any model
    built from diffusers' `Attention`), its text-attention kinds, and the recorder of per-call text layout for
    layers not told it."""

    name: str
    denoisers: tuple[type | str, ...]
    text_attention: tuple[TextAttention, ...]
    record: Recorder | None = None

    def __post_init__(self) -> None:
        _name("Family.name", self.name)
        denoisers = _sequence("Family.denoisers", self.denoisers, 'classes or "module:QualName" paths')
        object.__setattr__(
            self, "denoisers", tuple(_path(f"Family.denoisers[{i}]", cls) for i, cls in enumerate(denoisers))
        )
        kinds = _sequence("Family.text_attention", self.text_attention, "TextAttention records")
        for kind in kinds:
            if not isinstance(kind, TextAttention):
                raise TypeError(
                    f"Family.text_attention must be a tuple or list of TextAttention records, got an item of type "
                    f"{type(kind).__name__}: {kind!r}"
                )
        object.__setattr__(self, "text_attention", kinds)
        _callable("Family.record", self.record, "None or a callable (args, kwargs) -> TextLength", optional=True)


def _multiple_of_packing(tokens: int) -> int:
    from diffusers.models.transformers.transformer_z_image import SEQ_MULTI_OF  # imported with the model

    return -(-tokens // SEQ_MULTI_OF) * SEQ_MULTI_OF


def z_image_segments(args: tuple, kwargs: dict) -> TextLength:
    """Z-Image call: per sample `(image tokens, caption tokens)` of its unified `[img ; cap]` sequence, each
    padded to a multiple of `SEQ_MULTI_OF` as `ZImageTransformer2DModel.patchify_and_embed` pads them."""
    images, captions = denoiser_argument(args, kwargs, "x", 0), denoiser_argument(args, kwargs, "cap_feats", 2)
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


def _of_type(
    module_type: type | str, *, with_text_projections: bool | None = None
) -> Callable[[str, torch.nn.Module], bool]:
    def selects(name: str, module: torch.nn.Module) -> bool:
        if not isinstance(module, resolved(module_type)):
            return False
        return with_text_projections is None or (module.added_kv_proj_dim is not None) == with_text_projections

    return selects


def _named(suffix: str, module_type: type | str = torch.nn.Module) -> Callable[[str, torch.nn.Module], bool]:
    return lambda name, module: name.endswith(suffix) and isinstance(module, resolved(module_type))


def _in_blocks(prefix: str, module_type: type | str = torch.nn.Module) -> Callable[[str, torch.nn.Module], bool]:
    return lambda name, module: name.startswith(prefix) and isinstance(module, resolved(module_type))


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
_TRANSFORMERS = "diffusers.models.transformers."
_SANA = _TRANSFORMERS + "sana_transformer:SanaAttnProcessor2_0"

ATTENTION_MODULES = Family(
    "diffusers Attention (SD 1.5/2.x/SDXL U-Nets and ControlNets, PixArt, SANA, SD3/3.5)",
    (),
    (
        TextAttention(
            "every cross-attention (attn2)",
            _is_cross_attention,
            CROSS,
            {**_SDPA_LIKE, **_IP_ADAPTER, _SANA: _SANA},
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


def _in(module: str, *names: str) -> tuple[str, ...]:
    """The "module:QualName" paths of `names` in `diffusers.models.transformers.<module>`."""
    return tuple(f"{_TRANSFORMERS}{module}:{name}" for name in names)


def _same(*processors: str) -> dict[str, str]:
    """Stock processors whose own code runs with PLADIS."""
    return {processor: processor for processor in processors}


_FLUX_ATTENTION, _FLUX_PROCESSOR, _FLUX_IP_ADAPTER = _in(
    "transformer_flux", "FluxAttention", "FluxAttnProcessor", "FluxIPAdapterAttnProcessor"
)
_FLUX_DOUBLE = TextAttention(
    "double-stream blocks",
    _of_type(_FLUX_ATTENTION, with_text_projections=True),
    LEADING,
    _same(_FLUX_PROCESSOR, _FLUX_IP_ADAPTER),  # + IP-Adapter
)
_FLUX_SINGLE = TextAttention(
    "single-stream blocks",
    _of_type(_FLUX_ATTENTION, with_text_projections=False),
    LEADING,
    _same(_FLUX_PROCESSOR),
    optional=True,
)
_FLUX2_ATTENTION, _FLUX2_PROCESSOR, _FLUX2_PARALLEL, _FLUX2_PARALLEL_PROCESSOR = _in(
    "transformer_flux2",
    "Flux2Attention",
    "Flux2AttnProcessor",
    "Flux2ParallelSelfAttention",
    "Flux2ParallelSelfAttnProcessor",
)


def _hunyuan_blocks(processor: str) -> tuple[TextAttention, ...]:
    """HunyuanVideo and HunyuanImage 2.1: double-stream blocks, and the optional single-stream ones (their token
    refiner's text self-attention stays)."""
    return (
        TextAttention("double-stream blocks", _in_blocks("transformer_blocks.", Attention), TRAILING, _same(processor)),
        TextAttention(
            "single-stream blocks",
            _in_blocks("single_transformer_blocks.", Attention),
            TRAILING,
            _same(processor),
            optional=True,
        ),
    )


_BUILT_IN = (
    Family(
        "FLUX.1", _in("transformer_flux", "FluxTransformer2DModel"), (_FLUX_DOUBLE, _FLUX_SINGLE), joint_text_tokens
    ),
    Family(
        "Chroma", _in("transformer_chroma", "ChromaTransformer2DModel"), (_FLUX_DOUBLE, _FLUX_SINGLE), joint_text_tokens
    ),
    Family(
        "FLUX.2",
        _in("transformer_flux2", "Flux2Transformer2DModel"),
        (
            TextAttention("double-stream blocks", _of_type(_FLUX2_ATTENTION), LEADING, _same(_FLUX2_PROCESSOR)),
            TextAttention(
                "single-stream blocks",
                _of_type(_FLUX2_PARALLEL),
                LEADING,
                _same(_FLUX2_PARALLEL_PROCESSOR),
                optional=True,
            ),
        ),
        joint_text_tokens,
    ),
    Family(
        "Qwen-Image",
        _in("transformer_qwenimage", "QwenImageTransformer2DModel"),
        (
            TextAttention(
                "joint blocks",
                _named(".attn", Attention),
                LEADING,
                _same(*_in("transformer_qwenimage", "QwenDoubleStreamAttnProcessor2_0")),
            ),
        ),
    ),
    Family(
        "HunyuanVideo",
        _in("transformer_hunyuan_video", "HunyuanVideoTransformer3DModel"),
        _hunyuan_blocks(*_in("transformer_hunyuan_video", "HunyuanVideoAttnProcessor2_0")),
    ),
    Family(
        "HunyuanImage 2.1",
        _in("transformer_hunyuanimage", "HunyuanImageTransformer2DModel"),
        _hunyuan_blocks(*_in("transformer_hunyuanimage", "HunyuanImageAttnProcessor")),
    ),
    Family(
        "SANA-Video",
        _in("transformer_sana_video", "SanaVideoTransformer3DModel"),
        (  # its linear self-attention has no softmax
            TextAttention(
                "every cross-attention (attn2)",
                _is_cross_attention,
                CROSS,
                _same(*_in("transformer_sana_video", "SanaAttnProcessor2_0")),
            ),
        ),
    ),
    Family(
        "CogView4",
        _in("transformer_cogview4", "CogView4Transformer2DModel"),
        (
            TextAttention(
                "joint blocks",
                _in_blocks("transformer_blocks.", Attention),
                LEADING,
                _same(*_in("transformer_cogview4", "CogView4AttnProcessor")),
            ),
        ),
    ),
    Family(
        "Wan 2.x",
        _in("transformer_wan", "WanTransformer3DModel"),
        (
            TextAttention(
                "every cross-attention (attn2)",
                _named(".attn2", *_in("transformer_wan", "WanAttention")),
                CROSS,
                _same(*_in("transformer_wan", "WanAttnProcessor")),
                image_context_calls=_wan_image_context,
            ),
        ),
    ),
    Family(
        "LTX-Video",
        _in("transformer_ltx", "LTXVideoTransformer3DModel"),
        (
            TextAttention(
                "every cross-attention (attn2)",
                _named(".attn2", *_in("transformer_ltx", "LTXAttention")),
                CROSS,
                _same(*_in("transformer_ltx", "LTXVideoAttnProcessor")),
            ),
        ),
    ),
    Family(
        "Z-Image",
        _in("transformer_z_image", "ZImageTransformer2DModel"),
        (
            TextAttention(
                "unified blocks (layers)",
                _in_blocks("layers.", Attention),
                PACKED,
                _same(*_in("transformer_z_image", "ZSingleStreamAttnProcessor")),
            ),
        ),
        z_image_segments,
    ),
)


@dataclass(frozen=True)
class _Registry:
    """One consistent state of the registry, never changed once published: `register_family` publishes a new one
    (under `_LOCK`, one assignment) and readers read the one they took, so `family_of` needs no lock."""

    families: Mapping[str, Family]  # by name, in registration order
    denoisers: Mapping[str, Family]  # denoiser class path → its family's record


_LOCK = threading.Lock()  # serialises writers
_registry = _Registry(MappingProxyType({}), MappingProxyType({}))


def register_family(family: Family) -> Family:
    """Make PLADIS act on the models of `family`: models whose class, or a base class, `family.denoisers` names.

    A record of the same name is replaced (a user's newer record of a built-in family, say); a denoiser class another
    family names raises a `ValueError` naming both. Classes named by "module:QualName" paths are imported only when a
    model of the family is seen. Returns `family`. See the README ("The `attention` API") for an example.
    """
    if not isinstance(family, Family):
        raise TypeError(f"register_family takes a Family record, got {type(family).__name__}")
    if not family.denoisers:
        raise ValueError(f"family {family.name!r} names no denoiser class (the generic Attention record covers those)")
    global _registry
    with _LOCK:
        registry = _registry
        for denoiser in family.denoisers:
            other = registry.denoisers.get(denoiser)
            if other is not None and other.name != family.name:
                raise ValueError(
                    f"{denoiser} is already a denoiser of the family {other.name!r}, not of {family.name!r}"
                )
        families = {name: kept for name, kept in registry.families.items() if name != family.name}
        families[family.name] = family
        denoisers = {path: kept for path, kept in registry.denoisers.items() if kept.name != family.name}
        denoisers.update(dict.fromkeys(family.denoisers, family))
        _registry = _Registry(MappingProxyType(families), MappingProxyType(denoisers))
    return family


for _family in _BUILT_IN:
    register_family(_family)


def registered_families() -> tuple[Family, ...]:
    """Every registered family record, in registration order (the built-in ones first)."""
    return tuple(_registry.families.values())


def supported_families() -> str:
    """What PLADIS supports, for messages: the generic `Attention` models and every registered family."""
    return "SD 1.5/2.x/SDXL U-Nets, SD3, PixArt, SANA, " + ", ".join(_registry.families)


def family_of(model: torch.nn.Module) -> Family:
    """The record of `model`'s family: that of the nearest class of its MRO a registered family names (a subclass
    gets its parent's record), else the generic `Attention` record."""
    denoisers = _registry.denoisers  # one consistent state, also while a family is being registered
    for cls in type(model).__mro__:
        family = denoisers.get(class_path(cls))
        if family is not None:
            return family
    return ATTENTION_MODULES


def __getattr__(name: str) -> object:
    """`FAMILIES`: the registered families now (`registered_families`), read when asked, so it includes later ones."""
    if name == "FAMILIES":
        return registered_families()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
