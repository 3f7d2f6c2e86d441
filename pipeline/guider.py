"""`PLADISGuidance`: a diffusers guider (modular pipelines) that wraps any other guider and adds PLADIS.

The wrapped guider keeps its batches, its model preparation (PAG / skip-layer hooks) and its guidance formula;
`PLADISGuidance` turns PLADIS on for the denoiser calls of the steps inside its own window
(`pladis_start`/`pladis_stop`, the guiders' semantics: step i of N iff int(start·N) <= i < int(stop·N), from the
loop's `set_state`). Set it with `pipe.update_components(guider=PLADISGuidance(ClassifierFreeGuidance(5.0),
pladis_scale=2.0))`; `save_pretrained` / `from_pretrained` keep its configuration and the wrapped guider's.
"""

from __future__ import annotations

import json
from typing import Any

import diffusers
import torch
from diffusers.configuration_utils import register_to_config
from diffusers.guiders import ClassifierFreeGuidance
from diffusers.guiders.guider_utils import BaseGuidance

from attention.integration.guided import GuidedPLADIS
from attention.settings import PLADISSettings


def _inner_guider(guider: BaseGuidance | dict | None) -> BaseGuidance:
    """The wrapped guider: an instance, or the configuration dict a saved `PLADISGuidance` holds (with
    `_class_name`, a guider class of diffusers), or None for diffusers' default CFG."""
    if guider is None:
        return ClassifierFreeGuidance()
    if isinstance(guider, PLADISGuidance):
        raise TypeError("PLADISGuidance wraps another guider, not a PLADISGuidance")
    if isinstance(guider, BaseGuidance):
        return guider
    if isinstance(guider, dict):
        name = guider.get("_class_name")
        cls = getattr(diffusers, str(name), None)
        if not (isinstance(cls, type) and issubclass(cls, BaseGuidance)) or cls is PLADISGuidance:
            raise ValueError(f"guider: {name!r} is not a diffusers guider class")
        return cls.from_config(guider)
    raise TypeError(f"guider must be a diffusers guider (e.g. ClassifierFreeGuidance), got {type(guider).__name__}")


class PLADISGuidance(BaseGuidance):
    """Any diffusers guider (`guider`) with PLADIS on the denoiser calls of the steps inside its window.

    Args:
        guider: the guider whose batches and formula are used (CFG, CFG-Zero*, APG, PAG, skip-layer, ...);
            default diffusers' `ClassifierFreeGuidance()`.
        pladis_scale: λ (0 = off; 2.0 as in the paper). pladis_alpha: α in (1, 2].
        pladis_start, pladis_stop: the window, fractions of the denoising steps (0 <= start <= stop <= 1).
        pladis_layers: layer ids (`pag_applied_layers` semantics) of the denoiser's text attention; None: the
            family's default layers. pladis_single_blocks: also FLUX-style single-stream blocks (default layers).
    """

    _input_predictions: list[str] = []  # the wrapped guider's, per instance

    @register_to_config
    def __init__(
        self,
        guider: BaseGuidance | dict | None = None,
        pladis_scale: float = 2.0,
        pladis_alpha: float = 1.5,
        pladis_start: float = 0.0,
        pladis_stop: float = 1.0,
        pladis_layers: str | list[str] | None = None,
        pladis_single_blocks: bool = False,
    ) -> None:
        inner = _inner_guider(guider)
        self.settings = PLADISSettings(
            pladis_scale,
            pladis_alpha,
            pladis_single_blocks=pladis_single_blocks,
            pladis_start=pladis_start,
            pladis_stop=pladis_stop,
            pladis_layers=pladis_layers,
        )
        self.__dict__["guider"] = inner
        self._input_predictions = list(inner._input_predictions)
        super().__init__(0.0, 1.0, inner._enabled)
        self._pladis = GuidedPLADIS(self.settings)
        # The configuration holds what the wrapped guider itself would save, so from_pretrained rebuilds it.
        self.register_to_config(
            guider=json.loads(inner.to_json_string()),
            pladis_layers=None if self.settings.pladis_layers is None else list(self.settings.pladis_layers),
        )

    # The wrapped guider's switch, which modular pipelines read as `guider._enabled`.
    @property
    def _enabled(self) -> bool:
        return self.guider._enabled

    @_enabled.setter
    def _enabled(self, value: bool) -> None:
        self.guider._enabled = value

    def __getattr__(self, name: str) -> Any:
        """Attributes modular blocks read from the wrapped guider (e.g. `guidance_scale`)."""
        inner = self.__dict__.get("guider")
        if inner is None or name.startswith("__"):
            return super().__getattr__(name)
        return getattr(inner, name)

    def in_window(self) -> bool:
        """Whether PLADIS acts on the current step (every step when the loop has not said how many there are)."""
        if self._num_inference_steps is None or self._step is None:
            return True
        return self.settings.acts_on_step(self._step, self._num_inference_steps)

    def _last_step_of_window(self) -> bool:
        steps = self._num_inference_steps
        return (
            steps is not None
            and self._step is not None
            and (self._step >= min(steps, int(self.settings.pladis_stop * steps)) - 1)
        )

    def set_state(self, step: int, num_inference_steps: int, timestep: torch.Tensor) -> None:
        super().set_state(step, num_inference_steps, timestep)
        self.guider.set_state(step, num_inference_steps, timestep)
        if step == 0 or not self.in_window():
            self._pladis.release()  # a new run, or past the window: the denoiser gets its processors back

    def prepare_inputs(self, data: Any) -> list:
        return self.guider.prepare_inputs(data)

    def prepare_inputs_from_block_state(self, data: Any, input_fields: dict) -> list:
        return self.guider.prepare_inputs_from_block_state(data, input_fields)

    def prepare_models(self, denoiser: torch.nn.Module) -> None:
        self.guider.prepare_models(denoiser)
        if self.settings.pladis_scale > 0 and self.in_window():
            self._pladis.arm(denoiser)

    def cleanup_models(self, denoiser: torch.nn.Module) -> None:
        self._pladis.disarm()
        self.guider.cleanup_models(denoiser)

    def __call__(self, data: list) -> Any:
        output = self.guider(data)
        if self._pladis.held and self._last_step_of_window():
            self._pladis.release()
        return output

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.guider.forward(*args, **kwargs)

    def release_pladis(self) -> None:
        """Give the denoiser its original processors back now (done by itself after the window's last step,
        when the denoiser raises, and when a new run starts)."""
        self._pladis.release()

    @property
    def is_conditional(self) -> bool:
        return self.guider.is_conditional

    @property
    def is_unconditional(self) -> bool:
        return self.guider.is_unconditional

    @property
    def num_conditions(self) -> int:
        return self.guider.num_conditions

    def enable(self) -> None:
        self.guider.enable()

    def disable(self) -> None:
        self.guider.disable()

    def get_state(self) -> dict[str, Any]:
        return {**self.guider.get_state(), "pladis_in_window": self.in_window(), "pladis_held": self._pladis.held}
