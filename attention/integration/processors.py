"""PLADIS processors: a stock diffusers processor's own code, with its attention call bound to PLADIS.

`pladis_processor_class(StockProcessor)` runs `StockProcessor.__call__` (projections, norms, RoPE, masks,
output split: nothing is copied) with the names it calls attention through — `F.scaled_dot_product_attention`
or `dispatch_attention_fn` — bound to `attention_calls`, which computes the layer's PLADIS rule through the
two kernel seams. A processor either has fixed settings (`PLADISAttnProcessor(2.0)`, for hand use) or was
installed by `apply_pladis` and reads the settings of the current call (`attention.integration.call_context`),
delegating to the layer's original processor wherever no PLADIS call on its denoiser is active.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor2_0, JointAttnProcessor2_0

from ..settings import PLADISSettings, settings_from
from . import attention_calls
from .call_context import LayerCall, PLADISCall, active_calls, calls_in_context
from .composition import register_for_layer_skip
from .diffusers_families import class_path, resolved
from .text_layout import CROSS, LEADING, PACKED, TEXT_KEYS, TRAILING, TextLength

# `torch.nn.functional` as the stock processors see it, except that its SDPA is the PLADIS one.
_FUNCTIONAL = types.ModuleType(F.__name__, F.__doc__)
_FUNCTIONAL.__dict__.update({**vars(F), "scaled_dot_product_attention": attention_calls.scaled_dot_product_attention})


def _bound_to_pladis(stock_type: type) -> types.FunctionType:
    """`stock_type.__call__` with the attention function it calls bound to `attention.integration.attention_calls`."""
    function = stock_type.__call__
    namespace = dict(function.__globals__)
    names = set(function.__code__.co_names)
    if "dispatch_attention_fn" in names and "dispatch_attention_fn" in namespace:
        namespace["dispatch_attention_fn"] = attention_calls.dispatch_attention_fn
    elif "F" in names and namespace.get("F") is F:
        namespace["F"] = _FUNCTIONAL
    else:
        raise TypeError(
            f"{stock_type.__name__} computes attention through neither F.scaled_dot_product_attention nor "
            "dispatch_attention_fn, so PLADIS cannot take its attention call"
        )
    bound = types.FunctionType(
        function.__code__, namespace, function.__name__, function.__defaults__, function.__closure__
    )
    bound.__kwdefaults__ = function.__kwdefaults__
    return bound


def _no_image_context(attn: torch.nn.Module) -> int:
    return 0


class PLADISProcessor:
    """A stock processor (`stock_type`) whose attention call computes PLADIS on the layer's text keys.

    Use a class from `pladis_processor_class`. `Cls(pladis_scale, pladis_alpha, text_length=None)` has
    fixed settings, checked once here (`PLADISSettings`), never per call; `pladis_scale` may be a `PLADISSettings`
    in place of λ (then leave `pladis_alpha` at its default: the object holds every setting, e.g. `kernel`).
    `Cls.installed(...)` (what `apply_pladis` sets) follows the current call's settings, checked by `apply_pladis`.
    `text_keys` (see `attention_calls`) says where the text keys sit; joint layers read the text length
    from `encoder_hidden_states`, or, where the processor is not given it (single-stream blocks), from
    `text_length` / the length recorded from the denoiser call. `original`: the layer's processor, whose weights a
    processor with weights (an IP-Adapter's) runs on.
    """

    stock_type: ClassVar[type]
    default_text_keys: ClassVar[str | None] = None
    _pladis_call: ClassVar[Callable[..., Any]]
    _text_argument: ClassVar[int | None]  # index of encoder_hidden_states among the arguments after `attn`

    def __init__(
        self,
        pladis_scale: float | PLADISSettings,
        pladis_alpha: float = 1.5,
        text_length: TextLength | None = None,
        *,
        text_keys: str | None = None,
        original: object | None = None,
    ) -> None:
        settings = settings_from(pladis_scale, pladis_alpha=pladis_alpha)
        if text_length is not None and not isinstance(text_length, TextLength):
            raise TypeError(f"text_length must be a TextLength (see recorded_text_length), got {text_length!r}")
        fixed = PLADISCall(self, settings, recorded=text_length if text_length is not None else TextLength())
        original = self.stock_type() if original is None else original
        self._setup(original, text_keys or self.default_text_keys, None, _no_image_context, self, fixed)

    @classmethod
    def installed(
        cls,
        original: object,
        text_keys: str,
        layer: str,
        owner: object,
        image_context_calls: Callable[[torch.nn.Module], int] | None = None,
    ) -> PLADISProcessor:
        """The processor `apply_pladis` sets on the layer named `layer` whose processor was `original`: PLADIS
        with the settings `owner`'s current call has in this context where that call acts on this layer in
        this denoiser call (its layers, its step window), else exactly `original`. `image_context_calls(attn)`
        counts leading attention calls not on text."""
        processor = cls.__new__(cls)
        processor._setup(original, text_keys, layer, image_context_calls or _no_image_context, owner, None)
        return processor

    def _setup(self, original, text_keys, layer, image_context_calls, owner, settings) -> None:
        if text_keys not in TEXT_KEYS:
            raise ValueError(f"text_keys must be one of {TEXT_KEYS}, got {text_keys!r}")
        cls = type(self)
        if cls not in _LAYER_SKIP_REGISTERED:
            # With the first processor, not the class: diffusers' registry imports every transformer module.
            register_for_layer_skip(cls, self.stock_type)
            _LAYER_SKIP_REGISTERED.add(cls)
        if isinstance(self, torch.nn.Module):
            # A processor with weights (an IP-Adapter's) is a submodule of its layer: so is this one, holding the
            # original, so its weights stay in the model (`.to()`, offloading hooks) while PLADIS is installed.
            torch.nn.Module.__init__(self)
        self.original = original
        # The stock code runs on the original processor when it is of that type (its backend settings) or has
        # weights (an IP-Adapter's: the classic and xformers ones hold the SDPA one's), else on a fresh stock
        # processor (a sliced or xformers original is run as the SDPA processor).
        source = original._stock if isinstance(original, PLADISProcessor) else original  # one set by hand
        reused = type(source) is self.stock_type or isinstance(source, torch.nn.Module)
        object.__setattr__(self, "_stock", source if reused else self.stock_type())  # not a second submodule
        self.text_keys, self.layer, self.image_context_calls = text_keys, layer, image_context_calls
        object.__setattr__(self, "_owner", owner)  # a fixed-setting processor owns itself: not its own submodule
        self._fixed = settings
        family = getattr(owner, "family", None)  # an installation knows its model's family
        self.family = family.name if family is not None else self.stock_type.__name__

    @property
    def installed_by(self) -> object | None:
        """The installation (`apply_pladis`) that set this processor, None for one with fixed settings."""
        return self._owner if self._fixed is None else None

    @property
    def pladis_scale(self) -> float | None:
        """λ of a processor with fixed settings (None for one following the current call)."""
        return None if self._fixed is None else self._fixed.settings.pladis_scale

    @property
    def pladis_alpha(self) -> float | None:
        return None if self._fixed is None else self._fixed.settings.pladis_alpha

    def __repr__(self) -> str:
        settings = (
            "per call" if self._fixed is None else f"pladis_scale={self.pladis_scale}, pladis_alpha={self.pladis_alpha}"
        )
        return (
            f"{type(self).__name__}({settings}, text_keys={self.text_keys!r}, original={type(self.original).__name__})"
        )

    def current_call(self) -> PLADISCall | None:
        """The PLADIS call (its settings and their window and layers) this processor applies in the current context
        now (None: it runs `original`)."""
        if self._fixed is not None:
            return self._fixed
        calls = active_calls()
        settings = None if calls is None else calls.for_owner(self._owner)
        return settings if settings is not None and settings.acts_on(self.layer) else None

    def _text_layout(self, args: tuple, kwargs: dict, recorded: TextLength) -> tuple[int | None, tuple | None]:
        """(text tokens, packed segments) of this layer call."""
        if self.text_keys == CROSS:
            return None, None
        if self.text_keys == PACKED:
            return None, recorded.segments
        index = self._text_argument
        states = kwargs.get("encoder_hidden_states", args[index] if index is not None and len(args) > index else None)
        if states is not None:
            return int(states.shape[1]), None
        if self.text_keys == TRAILING and recorded.tokens is None:
            return 0, None  # SD3's joint attention without text is plain attention, as in the stock processor
        if recorded.tokens is None:
            raise RuntimeError(
                f"{type(self).__name__} in a block without encoder_hidden_states (a single-stream block) needs the "
                "text length of the current transformer call; install it with apply_pladis(pipe, ..., "
                "pladis_single_blocks=True)"
            )
        return recorded.tokens, None

    def _call(self, attn: torch.nn.Module, args: tuple, kwargs: dict) -> Any:
        calls = active_calls()
        call = self._fixed
        if call is None:
            call = None if calls is None else calls.for_owner(self._owner)
            if call is None or not call.acts_on(self.layer):
                return self.original(attn, *args, **kwargs)
        elif calls is None:  # a processor with fixed settings called outside apply_pladis: a slot for its layer
            with calls_in_context(()):
                return self._call(attn, args, kwargs)
        text_tokens, segments = self._text_layout(args, kwargs, call.recorded)
        layer = LayerCall(
            call.settings,
            self.text_keys,
            text_tokens,
            segments,
            self.image_context_calls(attn),
            self.family,
        )
        previous, calls.running = calls.running, layer
        try:
            return self._pladis_call(self._stock, attn, *args, **kwargs)
        finally:
            calls.running = previous


_CLASSES: dict[type, type] = {}
_LAYER_SKIP_REGISTERED: set[type] = set()  # the classes registered with diffusers' layer-skip hooks (`composition`)
# The public PLADIS classes of stock processors defined in diffusers transformer modules: made when first asked for
# (by name, or by an installation on a layer holding that processor), so importing this module imports neither.
_NAMED = {
    "diffusers.models.transformers.sana_transformer:SanaAttnProcessor2_0": ("PLADISSanaAttnProcessor", CROSS),
    "diffusers.models.transformers.transformer_flux:FluxAttnProcessor": ("PLADISFluxAttnProcessor", LEADING),
}


def pladis_processor_class(stock_type: type, name: str | None = None, text_keys: str | None = None) -> type:
    """The PLADIS processor class of `stock_type` (one per stock type): same call signature (diffusers
    passes a processor only the keyword arguments its `__call__` names), the stock code with its attention
    call bound to PLADIS; a `torch.nn.Module` when the stock processor is one (it has weights)."""
    if stock_type in _CLASSES:
        return _CLASSES[stock_type]
    name, text_keys = _NAMED.get(class_path(stock_type), (name, text_keys))
    signature = inspect.signature(stock_type.__call__)
    parameters = list(signature.parameters)
    text_argument = parameters.index("encoder_hidden_states") - 2 if "encoder_hidden_states" in parameters else None

    def __call__(self, attn, *args, **kwargs):
        return self._call(attn, args, kwargs)

    __call__.__signature__ = signature
    cls = type(
        name or f"PLADIS{stock_type.__name__}",
        (PLADISProcessor, torch.nn.Module) if issubclass(stock_type, torch.nn.Module) else (PLADISProcessor,),
        {
            "__call__": __call__,
            "__module__": __name__,
            "stock_type": stock_type,
            "default_text_keys": text_keys,
            "_pladis_call": staticmethod(_bound_to_pladis(stock_type)),
            "_text_argument": text_argument,
            "__doc__": f"`{stock_type.__name__}` with PLADIS on its attention call (see `PLADISProcessor`).",
        },
    )
    _CLASSES[stock_type] = cls
    return cls


PLADISAttnProcessor = pladis_processor_class(AttnProcessor2_0, "PLADISAttnProcessor", CROSS)
PLADISJointAttnProcessor = pladis_processor_class(JointAttnProcessor2_0, "PLADISJointAttnProcessor", TRAILING)


def __getattr__(name: str) -> type:
    """`PLADISSanaAttnProcessor`, `PLADISFluxAttnProcessor`: made (their stock module imported) when first asked for."""
    for path, (class_name, _) in _NAMED.items():
        if class_name == name:
            return pladis_processor_class(resolved(path))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
