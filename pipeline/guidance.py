"""Perturbed-attention guidance for the SDXL pipelines: PAG and SEG set up per call, with PLADIS.

`PerturbedGuidanceMixin` is shared by the SEG/PAG and ControlNet pipelines (diffusers' `PAGMixin`
subclasses): it checks the PAG / SEG / PLADIS arguments, installs the processors for one call and
puts everything back afterwards, also when the call raises. `GUIDANCE_ARGUMENTS` defines those
arguments once: both pipelines' keywords, defaults and docstrings, and the scripts' options, come from it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

# Only light modules at import time: the scripts build their options from `GUIDANCE_ARGUMENTS` before any
# model work, so `--help` must not load torch or diffusers; the processor machinery is imported where used.
from attention.settings import PLADISSettings
from attention.validation import (
    SEG_INFINITE_BLUR,
    check_applied_layers,
    check_flag,
    check_guidance_scale,
    check_pladis_alpha,
    check_pladis_scale,
    check_seg_blur_sigma,
)


@dataclass(frozen=True)
class GuidanceArgument:
    """One per-call guidance argument of the PAG/SEG pipelines, defined once: the keyword, its default and
    type, the line that documents it, the check of its value (given the name to report), and the option
    the scripts offer for it (None: the scripts set it their own way, as for λ sweeps)."""

    name: str
    default: Any
    annotation: str
    help: str
    check: Callable[[str, Any], Any] | None  # None: layer ids, checked against the model's layers
    option: str | None = None  # `pag_layers` → `--pag-layers`
    kind: type = float  # how the scripts parse it: float, bool, or list (layer ids)


GUIDANCE_ARGUMENTS: tuple[GuidanceArgument, ...] = (
    GuidanceArgument(
        "pag_scale",
        0.0,
        "float",
        "PAG strength s (0 = off); the perturbed self-attention is the identity.",
        check_guidance_scale,
        "pag_scale",
    ),
    GuidanceArgument(
        "pag_adaptive_scale",
        0.0,
        "float",
        "PAG's timestep-adaptive decay (PAG only).",
        check_guidance_scale,
        "pag_adaptive_scale",
    ),
    GuidanceArgument(
        "pag_applied_layers",
        None,
        "str | list[str] | None",
        'PAG layer ids (regexes on module names: "mid", "down_blocks.2", "up_blocks.0.attentions.1"); '
        'None = the pipeline\'s own, ["mid"] unless set otherwise.',
        None,
        "pag_layers",
        list,
    ),
    GuidanceArgument(
        "seg_scale",
        0.0,
        "float",
        "SEG strength s (0 = off); cannot be combined with pag_scale > 0.",
        check_guidance_scale,
        "seg_scale",
    ),
    GuidanceArgument(
        "seg_blur_sigma",
        SEG_INFINITE_BLUR,
        "float",
        "σ of SEG's query blur; above 9999 (the default) the query becomes its mean.",
        lambda name, value: check_seg_blur_sigma(value),
        "seg_blur_sigma",
    ),
    GuidanceArgument(
        "seg_applied_layers",
        None,
        "str | list[str] | None",
        'SEG layer ids, same syntax as pag_applied_layers; None = ["mid"].',
        None,
        "seg_layers",
        list,
    ),
    GuidanceArgument(
        "pladis_scale",
        0.0,
        "float",
        "λ in softmax + λ·(entmax_α − softmax) on every cross-attention layer; 0 = off.",
        lambda name, value: check_pladis_scale(value),
    ),
    GuidanceArgument(
        "pladis_alpha",
        1.5,
        "float",
        "α of the sparse map, in (1, 2]; 1.5 = entmax15 (default), 2.0 = sparsemax.",
        lambda name, value: check_pladis_alpha(value),
    ),
    GuidanceArgument(
        "pladis_controlnet",
        False,
        "bool",
        "also put PLADIS on every cross-attention layer of the ControlNet(s) (ControlNet pipeline).",
        check_flag,
        "pladis_controlnet",
        bool,
    ),
)
GUIDANCE_BY_NAME = {argument.name: argument for argument in GUIDANCE_ARGUMENTS}
# The SEG/PAG pipeline takes all but pladis_controlnet; the ControlNet pipeline takes them all.
SEG_PIPELINE_ARGUMENTS = tuple(argument for argument in GUIDANCE_ARGUMENTS if argument.name != "pladis_controlnet")
CONTROLNET_PIPELINE_ARGUMENTS = GUIDANCE_ARGUMENTS


def guidance_signature(arguments: Sequence[GuidanceArgument]) -> inspect.Signature:
    """`(self, *args, <each argument>=<default>, **kwargs)`: what a pipeline's `__call__` taking `arguments`
    by keyword shows to `inspect.signature` (and so to the scripts' `call_parameters`)."""
    keyword = inspect.Parameter.KEYWORD_ONLY
    return inspect.Signature(
        [
            inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
            inspect.Parameter("args", inspect.Parameter.VAR_POSITIONAL, annotation="Any"),
            *(inspect.Parameter(a.name, keyword, default=a.default, annotation=a.annotation) for a in arguments),
            inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD, annotation="Any"),
        ]
    )


def accepts_guidance(arguments: Sequence[GuidanceArgument]) -> Callable[[Callable], Callable]:
    """Decorate a pipeline's `__call__(self, guidance, *args, **kwargs)`: callers pass `arguments` by keyword
    (unset ones take their defaults) and the method gets them as the dict `guidance`; every other keyword
    goes on to the parent pipeline, which refuses unknown ones. The signature and docstring list them."""

    def decorate(call: Callable) -> Callable:
        def __call__(self, *args: Any, **kwargs: Any):
            guidance = {argument.name: kwargs.pop(argument.name, argument.default) for argument in arguments}
            return call(self, guidance, *args, **kwargs)

        __call__.__name__, __call__.__qualname__, __call__.__module__ = (
            call.__name__,
            call.__qualname__,
            call.__module__,
        )
        lines = "\n".join(f"        {argument.name}: {argument.help}" for argument in arguments)
        __call__.__doc__ = f"{(call.__doc__ or '').rstrip()}\n\n{lines}\n        "
        __call__.__signature__ = guidance_signature(arguments)
        return __call__

    return decorate


# The PLADIS arguments of a call: checked once, together, by `PLADISSettings` (the object the attention trusts).
PLADIS_ARGUMENTS = ("pladis_scale", "pladis_alpha", "pladis_controlnet")


def checked_guidance(guidance: Mapping[str, Any]) -> tuple[dict[str, Any], PLADISSettings]:
    """Every guidance argument (the table's default where `guidance` has none), checked in the table's order
    and normalised (scales as floats), and the call's PLADIS settings; layer ids are left to the model's check."""
    values = {argument.name: guidance.get(argument.name, argument.default) for argument in GUIDANCE_ARGUMENTS}
    for argument in GUIDANCE_ARGUMENTS:
        if argument.check is not None and argument.name not in PLADIS_ARGUMENTS:
            values[argument.name] = argument.check(argument.name, values[argument.name])
    return values, PLADISSettings(*(values.pop(name) for name in PLADIS_ARGUMENTS))


DEFAULT_SEG_LAYERS = ("mid",)
# PAGMixin keeps these on the pipeline object; a call must leave them as it found them.
_PAG_STATE = ("pag_applied_layers", "_pag_attn_processors", "_pag_scale", "_pag_adaptive_scale")
_MISSING = object()


def self_attention_layer_names(unet: Any) -> list[str]:
    """Names of the self-attention (`attn1`) layers of `unet`: what PAG / SEG layer ids are matched against."""
    from diffusers.models.attention_processor import Attention

    return [
        name for name, module in unet.named_modules() if isinstance(module, Attention) and not module.is_cross_attention
    ]


class PerturbedGuidanceMixin:
    """Per-call PAG / SEG / PLADIS set-up for diffusers' PAG pipelines (`PAGMixin` subclasses).

    PAG uses the pipeline's own processors; SEG reuses PAG's loop and formula
    `ε = ε_u + w(ε_c − ε_u) + s(ε_c − ε_perturbed)` with a query-blurring processor pair; PLADIS
    goes on cross-attention only. Arguments are checked before anything is touched, and the
    processors and PAG attributes are put back in `finally`.
    """

    def _self_attention_layer_names(self) -> list[str]:
        return self_attention_layer_names(self.unet)

    @contextmanager
    def _perturbed_guidance(self, arguments: Mapping[str, Any]) -> Iterator[dict[str, float]]:
        """Set up one call from its guidance arguments (names of `GUIDANCE_ARGUMENTS`; missing ones take their
        defaults); yields the `pag_scale` / `pag_adaptive_scale` to pass to the parent's `__call__`."""
        from attention.install import apply_pladis_settings, swapped_attn_processors
        from attention.seg_processor import recording_latent_size, seg_attn_processors

        values, pladis = checked_guidance(arguments)
        pag_scale, pag_adaptive_scale, seg_scale = (
            values["pag_scale"],
            values["pag_adaptive_scale"],
            values["seg_scale"],
        )
        pag_applied_layers, seg_applied_layers = values["pag_applied_layers"], values["seg_applied_layers"]
        seg_blur_sigma = values["seg_blur_sigma"]
        if pag_scale > 0 and seg_scale > 0:
            raise ValueError(
                f"pag_scale={pag_scale:g} and seg_scale={seg_scale:g}: PAG and SEG both perturb self-attention "
                "in the same extra batch chunk, so use one of them (set the other to 0)"
            )
        if seg_scale > 0 and pag_adaptive_scale > 0:
            raise ValueError("pag_adaptive_scale applies to PAG only; set it to 0 when seg_scale > 0")
        # Layer ids are checked even when their guidance is off, so a typo never passes silently.
        names = self._self_attention_layer_names()
        if pag_applied_layers is not None:
            pag_applied_layers = check_applied_layers("pag_applied_layers", pag_applied_layers, names)
        if seg_applied_layers is not None:
            seg_applied_layers = check_applied_layers("seg_applied_layers", seg_applied_layers, names)
        if pag_scale > 0:
            layers = pag_applied_layers or check_applied_layers("pag_applied_layers", self.pag_applied_layers, names)
        elif seg_scale > 0:
            layers = seg_applied_layers or list(DEFAULT_SEG_LAYERS)

        saved_state = {name: getattr(self, name, _MISSING) for name in _PAG_STATE}
        with ExitStack() as stack:
            stack.callback(self._restore_pag_state, saved_state)
            # The stock PAG loop swaps self-attention processors without a `finally`: snapshot them all.
            stack.enter_context(swapped_attn_processors(self.unet, {}))
            if pag_scale > 0:
                self.set_pag_applied_layers(layers, pag_attn_processors=self._pag_attn_processors)
                guidance = {"pag_scale": pag_scale, "pag_adaptive_scale": pag_adaptive_scale}
            elif seg_scale > 0:
                latent_size = stack.enter_context(recording_latent_size(self.unet))
                seg_processors = seg_attn_processors(seg_blur_sigma, latent_size)
                self.set_pag_applied_layers(layers, pag_attn_processors=seg_processors)
                guidance = {"pag_scale": seg_scale, "pag_adaptive_scale": 0.0}
            else:
                guidance = {"pag_scale": 0.0, "pag_adaptive_scale": 0.0}
            # After this call's PAG/SEG layers are set, so apply_pladis checks them, not the last call's.
            stack.enter_context(apply_pladis_settings(self, pladis))
            yield guidance

    def _restore_pag_state(self, saved_state: dict[str, object]) -> None:
        for name, value in saved_state.items():
            if value is _MISSING:
                self.__dict__.pop(name, None)
            else:
                setattr(self, name, value)
