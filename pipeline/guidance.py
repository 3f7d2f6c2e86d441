"""The per-call keywords of the PLADIS pipelines, defined once, and perturbed-attention guidance for SDXL.

`GUIDANCE_ARGUMENTS` is the one table of the keywords the PLADIS pipelines add to their parents' `__call__`
(PLADIS, PAG, SEG): each row says which pipelines take it, and their signatures, defaults, docstrings and
checks (`pipeline/call_signature.py`), and the scripts' options, come from it. `PerturbedGuidanceMixin` is
shared by the SEG/PAG and ControlNet pipelines (diffusers' `PAGMixin` subclasses): it checks the PAG / SEG /
PLADIS arguments, installs the processors for one call and puts everything back afterwards, also when the
call raises.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, fields
from typing import Any

# Only light modules at import time: the scripts build their options from `GUIDANCE_ARGUMENTS` before any
# model work, so `--help` must not load torch or diffusers; the processor machinery is imported where used.
from attention.perturbation.seg_sigma import SEG_INFINITE_BLUR, check_seg_blur_sigma
from attention.settings import PLADISSettings
from attention.validation import (
    check_applied_layers,
    check_flag,
    check_guidance_scale,
    check_pladis_alpha,
    check_pladis_scale,
)

# The PLADIS pipelines, by their `--pipeline` names: what a row of the table says it is a keyword of.
SDXL, SDXL_SEG, CONTROLNET, FLUX = "sdxl", "sdxl-seg", "controlnet", "flux"
EVERY_PIPELINE = frozenset({SDXL, SDXL_SEG, CONTROLNET, FLUX})
PERTURBED_GUIDANCE = frozenset({SDXL_SEG, CONTROLNET})  # diffusers' PAG pipelines underneath


@dataclass(frozen=True)
class GuidanceArgument:
    """One per-call keyword of the PLADIS pipelines, defined once: the keyword, its default and type, the line
    that documents it, the check of its value (given the name to report), the option the scripts offer for it
    (None: the scripts set it their own way, as for λ sweeps), and the pipelines that take it. A keyword named
    like a `PLADISSettings` field goes to the attention as that field (and is checked there)."""

    name: str
    default: Any
    annotation: str
    help: str
    check: Callable[[str, Any], Any] | None  # None: layer ids, checked against the model's layers
    option: str | None = None  # `pag_layers` → `--pag-layers`
    kind: type = float  # how the scripts parse it: float, bool, or list (layer ids)
    pipelines: frozenset[str] = EVERY_PIPELINE


GUIDANCE_ARGUMENTS: tuple[GuidanceArgument, ...] = (
    GuidanceArgument(
        "pag_scale",
        0.0,
        "float",
        "PAG strength s (0 = off); the perturbed self-attention is the identity.",
        check_guidance_scale,
        "pag_scale",
        pipelines=PERTURBED_GUIDANCE,
    ),
    GuidanceArgument(
        "pag_adaptive_scale",
        0.0,
        "float",
        "PAG's timestep-adaptive decay (PAG only).",
        check_guidance_scale,
        "pag_adaptive_scale",
        pipelines=PERTURBED_GUIDANCE,
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
        PERTURBED_GUIDANCE,
    ),
    GuidanceArgument(
        "seg_scale",
        0.0,
        "float",
        "SEG strength s (0 = off); cannot be combined with pag_scale > 0.",
        check_guidance_scale,
        "seg_scale",
        pipelines=PERTURBED_GUIDANCE,
    ),
    GuidanceArgument(
        "seg_blur_sigma",
        SEG_INFINITE_BLUR,
        "float",
        "σ of SEG's query blur; above 9999 (the default) the query becomes its mean.",
        lambda name, value: check_seg_blur_sigma(value),
        "seg_blur_sigma",
        pipelines=PERTURBED_GUIDANCE,
    ),
    GuidanceArgument(
        "seg_applied_layers",
        None,
        "str | list[str] | None",
        'SEG layer ids, same syntax as pag_applied_layers; None = ["mid"].',
        None,
        "seg_layers",
        list,
        PERTURBED_GUIDANCE,
    ),
    GuidanceArgument(
        "pladis_scale",
        None,
        "float | None",
        "λ of PLADIS: softmax + λ·(entmax_α − softmax) on the denoiser's text attention (cross-attention; FLUX: "
        "the image-query × text-key block); 0 = off, the stock pipeline bit for bit; 1.5–2.0 is typical. None (the "
        "default): what an enclosing apply_pladis set, else 0. Every PLADIS keyword left at None keeps the enclosing "
        "apply_pladis's value (else its usual default); one given replaces it for this call.",
        lambda name, value: check_pladis_scale(value),
    ),
    GuidanceArgument(
        "pladis_alpha",
        None,
        "float | None",
        "α of the sparse map, in (1, 2]; 1.5 = entmax15 (the usual default), 2.0 = sparsemax.",
        lambda name, value: check_pladis_alpha(value),
    ),
    GuidanceArgument(
        "pladis_start",
        None,
        "float | None",
        "the step window's start, a fraction of the denoising steps: PLADIS acts on step i of N iff "
        "int(start·N) <= i < int(stop·N), as diffusers' guiders' start/stop (usual default 0).",
        None,
    ),
    GuidanceArgument(
        "pladis_stop",
        None,
        "float | None",
        "the step window's stop, a fraction of the denoising steps, pladis_start <= pladis_stop <= 1 (usual "
        "default 1).",
        None,
    ),
    GuidanceArgument(
        "pladis_layers",
        None,
        "str | list[str] | None",
        'the text-attention layers PLADIS acts on, ids as pag_applied_layers ("mid", "down_blocks.2", '
        '"up_blocks.0.attentions.1", "transformer_blocks.3", "single_transformer_blocks"); usual default: the '
        "model's default layers.",
        None,
    ),
    GuidanceArgument(
        "pladis_controlnet",
        None,
        "bool | None",
        "also put PLADIS on every cross-attention layer of the ControlNet(s) (ControlNet pipeline).",
        check_flag,
        "pladis_controlnet",
        bool,
        frozenset({CONTROLNET}),
    ),
    GuidanceArgument(
        "pladis_single_blocks",
        None,
        "bool | None",
        "also apply PLADIS in FLUX's single-stream blocks (default: the double-stream blocks only; the authors' "
        "reference is unclear on single-stream blocks).",
        check_flag,
        "pladis_single_blocks",
        bool,
        frozenset({FLUX}),
    ),
)
GUIDANCE_BY_NAME = {argument.name: argument for argument in GUIDANCE_ARGUMENTS}


def keywords_of(pipeline: str) -> tuple[GuidanceArgument, ...]:
    """The rows of `GUIDANCE_ARGUMENTS` that `pipeline` (SDXL, SDXL_SEG, CONTROLNET or FLUX) takes, in order."""
    if pipeline not in EVERY_PIPELINE:
        raise ValueError(f"unknown PLADIS pipeline {pipeline!r}; the table knows {', '.join(sorted(EVERY_PIPELINE))}")
    return tuple(argument for argument in GUIDANCE_ARGUMENTS if pipeline in argument.pipelines)


# The PLADIS arguments of a call: checked once, together, by `PLADISSettings` (the object the attention trusts).
PLADIS_ARGUMENTS = tuple(field.name for field in fields(PLADISSettings))


def pladis_settings(pipe: Any, values: Mapping[str, Any]) -> PLADISSettings | None:
    """The call's `PLADISSettings` from its PLADIS keywords (None = not given): None when it gives none, so what
    an enclosing `apply_pladis` set stays in force; else that call's settings (or `PLADISSettings`' defaults)
    with the given keywords replacing theirs, checked once (`attention.integration.install.settings_of_call`)."""
    from attention.integration.install import settings_of_call

    return settings_of_call(pipe, {name: values[name] for name in PLADIS_ARGUMENTS if name in values})


@contextmanager
def pladis_for_call(pipe: Any, values: Mapping[str, Any]) -> Iterator[None]:
    """The body with this call's PLADIS settings (`pladis_settings`), or, when it gives none, with what an
    enclosing `apply_pladis` set (nothing when none did)."""
    from attention.integration.install import apply_pladis

    settings = pladis_settings(pipe, values)
    with nullcontext() if settings is None else apply_pladis(pipe, settings):
        yield


def checked_guidance(pipe: Any, guidance: Mapping[str, Any]) -> tuple[dict[str, Any], PLADISSettings | None]:
    """Every guidance argument (the table's default where `guidance` has none), checked in the table's order
    and normalised (scales as floats), and the call's PLADIS settings (`pladis_settings`); layer ids are left to
    the model's check."""
    values = {argument.name: guidance.get(argument.name, argument.default) for argument in GUIDANCE_ARGUMENTS}
    for argument in GUIDANCE_ARGUMENTS:
        if argument.check is not None and argument.name not in PLADIS_ARGUMENTS:
            values[argument.name] = argument.check(argument.name, values[argument.name])
    return values, pladis_settings(pipe, {name: values.pop(name) for name in PLADIS_ARGUMENTS if name in values})


DEFAULT_SEG_LAYERS = ("mid",)
# PAGMixin keeps these on the pipeline object; a call must leave them as it found them.
_PAG_STATE = ("pag_applied_layers", "_pag_attn_processors", "_pag_scale", "_pag_adaptive_scale")
_MISSING = object()


def self_attention_layer_names(unet: Any) -> list[str]:
    """Names of the self-attention (`attn1`) layers of `unet`: what PAG / SEG layer ids are matched against."""
    from attention.perturbation.perturbed_calls import self_attention_layer_names as layer_names

    return layer_names(unet)


class PerturbedGuidanceMixin:
    """Per-call PAG / SEG / PLADIS set-up for diffusers' PAG pipelines (`PAGMixin` subclasses).

    PAG uses the pipeline's own processors; SEG reuses PAG's loop and formula
    `ε = ε_u + w(ε_c − ε_u) + s(ε_c − ε_perturbed)` with a query-blurring processor pair; PLADIS
    goes on cross-attention only. Arguments are checked before anything is touched, and the
    processors and PAG attributes are put back in `finally`. The perturbation belongs to the call
    (`attention.perturbation.perturbed_calls`): overlapping calls on a shared U-Net, in other threads, each get
    their own, and stock calls on it get none.
    """

    def _self_attention_layer_names(self) -> list[str]:
        return self_attention_layer_names(self.unet)

    @contextmanager
    def _perturbed_guidance(self, arguments: Mapping[str, Any]) -> Iterator[dict[str, float]]:
        """Set up one call from its guidance arguments (names of `GUIDANCE_ARGUMENTS`; missing ones take their
        defaults); yields the `pag_scale` / `pag_adaptive_scale` to pass to the parent's `__call__`."""
        from attention.integration.install import apply_pladis
        from attention.perturbation.perturbed_calls import perturbed_call
        from attention.perturbation.seg_processor import seg_attn_processors

        values, pladis = checked_guidance(self, arguments)
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
            # This call's perturbation, set by `_set_pag_attn_processor` when the stock loop starts.
            call = stack.enter_context(perturbed_call(self.unet))
            if pag_scale > 0:
                self.set_pag_applied_layers(layers, pag_attn_processors=self._pag_attn_processors)
                guidance = {"pag_scale": pag_scale, "pag_adaptive_scale": pag_adaptive_scale}
            elif seg_scale > 0:
                seg_processors = seg_attn_processors(seg_blur_sigma, call.latent_size)
                self.set_pag_applied_layers(layers, pag_attn_processors=seg_processors)
                guidance = {"pag_scale": seg_scale, "pag_adaptive_scale": 0.0}
            else:
                guidance = {"pag_scale": 0.0, "pag_adaptive_scale": 0.0}
            # After this call's PAG/SEG layers are set, so apply_pladis checks them, not the last call's.
            if pladis is not None:  # None: no PLADIS keyword given, what an enclosing apply_pladis set stays
                stack.enter_context(apply_pladis(self, pladis))
            yield guidance

    def _set_pag_attn_processor(self, pag_applied_layers: list[str], do_classifier_free_guidance: bool) -> None:
        """What diffusers' PAG loop calls when it starts: here the processor goes on this call's layers for
        this call only (`PerturbedCall.perturb`), not on the shared U-Net (outside a call: diffusers' own)."""
        from attention.perturbation.perturbed_calls import current_perturbed_call, perturbed_layer_names

        call = current_perturbed_call(self.unet)
        if call is None:
            return super()._set_pag_attn_processor(pag_applied_layers, do_classifier_free_guidance)
        processor = self._pag_attn_processors[0 if do_classifier_free_guidance else 1]
        call.perturb(perturbed_layer_names(self.unet, pag_applied_layers), processor)

    def _restore_pag_state(self, saved_state: dict[str, object]) -> None:
        for name, value in saved_state.items():
            if value is _MISSING:
                self.__dict__.pop(name, None)
            else:
                setattr(self, name, value)
