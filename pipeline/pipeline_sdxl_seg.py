"""`PLADISStableDiffusionXLSEGPipeline`: SDXL with CFG, PAG or SEG guidance, each combinable with PLADIS.

It is diffusers' `StableDiffusionXLPAGPipeline` (its loop and guidance formula) with SEG as a second
perturbed-attention processor pair, PLADIS on cross-attention, and the pipeline state restored after
every call, also when it raises. Also importable here under the reference's name
`PLADISStableDiffusionXLPipeline`.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Any, Iterator

from diffusers import StableDiffusionXLPAGPipeline
from diffusers.models.attention_processor import Attention

from attention import (
    apply_pladis,
    check_applied_layers,
    check_guidance_scale,
    check_pladis_alpha,
    check_pladis_scale,
    check_seg_blur_sigma,
    recording_latent_size,
    seg_attn_processors,
    swapped_attn_processors,
)

from .saving import SavesAsStockPipeline

SEG_INFINITE_BLUR = 9999999.0  # the SEG reference's default σ: anything above 9999 is "infinite"
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
        check_pladis_scale(pladis_scale)
        check_pladis_alpha(pladis_alpha)
        if not isinstance(pladis_controlnet, bool):
            raise TypeError(f"pladis_controlnet must be a bool, got {pladis_controlnet!r}")
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
            stack.enter_context(apply_pladis(self, pladis_scale, pladis_alpha, pladis_controlnet=pladis_controlnet))
            yield guidance

    def _restore_pag_state(self, saved_state: dict[str, object]) -> None:
        for name, value in saved_state.items():
            if value is _MISSING:
                self.__dict__.pop(name, None)
            else:
                setattr(self, name, value)


class PLADISStableDiffusionXLSEGPipeline(SavesAsStockPipeline, PerturbedGuidanceMixin, StableDiffusionXLPAGPipeline):
    """SDXL with CFG, PAG or SEG, each with PLADIS: `pipe(prompt, seg_scale=3.0, pladis_scale=2.0)`.

    With `pag_scale=0` and `seg_scale=0` (the defaults) it is plain CFG, as `StableDiffusionXLPipeline`.
    """

    def __call__(
        self,
        *args: Any,
        pag_scale: float = 0.0,
        pag_adaptive_scale: float = 0.0,
        pag_applied_layers: str | list[str] | None = None,
        seg_scale: float = 0.0,
        seg_blur_sigma: float = SEG_INFINITE_BLUR,
        seg_applied_layers: str | list[str] | None = None,
        pladis_scale: float = 0.0,
        pladis_alpha: float = 1.5,
        **kwargs: Any,
    ):
        """Call `StableDiffusionXLPAGPipeline.__call__` with the chosen guidance; other arguments are its own.

        pag_scale: PAG strength s (0 = off); the perturbed self-attention is the identity.
        pag_adaptive_scale: PAG's timestep-adaptive decay (PAG only).
        pag_applied_layers: PAG layer ids (regexes on module names: "mid", "down_blocks.2",
            "up_blocks.0.attentions.1"); None = the pipeline's own, `["mid"]` unless set otherwise.
        seg_scale: SEG strength s (0 = off); cannot be combined with `pag_scale > 0`.
        seg_blur_sigma: σ of the query blur; above 9999 (the default) the query becomes its mean.
        seg_applied_layers: SEG layer ids, same syntax; None = `["mid"]`.
        pladis_scale: λ in `softmax + λ·(entmax_α − softmax)` on every cross-attention layer; 0 = off.
        pladis_alpha: α of the sparse map, in (1, 2]; 1.5 = entmax15 (default), 2.0 = sparsemax.
        """
        with self._perturbed_guidance(
            pag_scale=pag_scale, pag_adaptive_scale=pag_adaptive_scale, pag_applied_layers=pag_applied_layers,
            seg_scale=seg_scale, seg_blur_sigma=seg_blur_sigma, seg_applied_layers=seg_applied_layers,
            pladis_scale=pladis_scale, pladis_alpha=pladis_alpha,
        ) as perturbed:
            return super().__call__(*args, **perturbed, **kwargs)


# The reference repository's name for this pipeline (`from pipeline_sdxl_seg import PLADISStableDiffusionXLPipeline`).
PLADISStableDiffusionXLPipeline = PLADISStableDiffusionXLSEGPipeline
