"""Perturbed-attention guidance for the SDXL pipelines: PAG and SEG set up per call, with PLADIS.

`PerturbedGuidanceMixin` is shared by the SEG/PAG and ControlNet pipelines (diffusers' `PAGMixin`
subclasses): it checks the PAG / SEG / PLADIS arguments, installs the processors for one call and
puts everything back afterwards, also when the call raises.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Any, Iterator

from diffusers.models.attention_processor import Attention

from attention.install import apply_pladis_settings, swapped_attn_processors
from attention.seg_processor import recording_latent_size, seg_attn_processors
from attention.settings import PLADISSettings
from attention.validation import check_applied_layers, check_guidance_scale, check_seg_blur_sigma
from attention.seg_blur import SEG_INFINITE_BLUR  # noqa: F401  (the pipelines' default σ, re-exported)

DEFAULT_SEG_LAYERS = ("mid",)
# PAGMixin keeps these on the pipeline object; a call must leave them as it found them.
_PAG_STATE = ("pag_applied_layers", "_pag_attn_processors", "_pag_scale", "_pag_adaptive_scale")
_MISSING = object()


def self_attention_layer_names(unet: Any) -> list[str]:
    """Names of the self-attention (`attn1`) layers of `unet`: what PAG / SEG layer ids are matched against."""
    return [name for name, module in unet.named_modules()
            if isinstance(module, Attention) and not module.is_cross_attention]


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
    def _perturbed_guidance(
        self,
        *,
        pag_scale: float,
        pag_adaptive_scale: float,
        pag_applied_layers: str | list[str] | None,
        seg_scale: float,
        seg_blur_sigma: float,
        seg_applied_layers: str | list[str] | None,
        pladis_scale: float,
        pladis_alpha: float,
        pladis_controlnet: bool = False,
    ) -> Iterator[dict[str, float]]:
        """Set up one call; yields the `pag_scale` / `pag_adaptive_scale` to pass to the parent's `__call__`."""
        pag_scale = check_guidance_scale("pag_scale", pag_scale)
        pag_adaptive_scale = check_guidance_scale("pag_adaptive_scale", pag_adaptive_scale)
        seg_scale = check_guidance_scale("seg_scale", seg_scale)
        seg_blur_sigma = check_seg_blur_sigma(seg_blur_sigma)
        pladis = PLADISSettings(pladis_scale, pladis_alpha, pladis_controlnet)  # checked once for the whole call
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
