"""PLADIS switched on by a driver outside the denoiser's call (a diffusers guider): installed once on the
denoiser for as long as the driver holds it, on for exactly the denoiser calls it arms.

Installing processors costs a walk over the model (tens of milliseconds on an SDXL U-Net), too much for every
denoiser call, so the processors stay installed while held (they run the original processors in every call
not armed: other threads and stock calls see the stock model). Arming one call registers a forward pre-hook
that makes this call's settings active in the caller's context and an always-called forward hook that ends
them and removes both hooks; when the denoiser raises, that hook also releases the installation.
"""

from __future__ import annotations

from contextlib import ExitStack

import torch

from ..kernels.table import kernel_requested
from ..settings import PLADISSettings
from .call_context import PLADISCall, calls_in_context
from .composition import check_window_without_step_cache
from .diffusers_families import family_of
from .install import attention_model, installed_pladis, text_attention_layers


class GuidedPLADIS:
    """PLADIS with `settings` (λ, α, layers; the window is the driver's) on the denoiser calls a driver arms."""

    def __init__(self, settings: PLADISSettings) -> None:
        if not isinstance(settings, PLADISSettings):
            raise TypeError(f"settings must be a PLADISSettings, got {type(settings).__name__}")
        self.settings = settings
        self._model: torch.nn.Module | None = None
        self._installation: ExitStack | None = None
        self._call: PLADISCall | None = None
        self._hooks: list = []
        self._active: ExitStack | None = None

    @property
    def held(self) -> bool:
        """Whether PLADIS processors are installed on a denoiser for this driver now."""
        return self._installation is not None

    def arm(self, denoiser: torch.nn.Module) -> None:
        """Run PLADIS in the next forward call of `denoiser` (installing it there first if not held yet)."""
        model = attention_model(denoiser)
        if self._model is not model:
            self.release()
            self._hold(model)
        self.disarm()
        self._hooks = [
            model.register_forward_pre_hook(self._start, prepend=True),  # before the installation's own recorder
            model.register_forward_hook(self._end, always_call=True),
        ]

    def _hold(self, model: torch.nn.Module) -> None:
        kernel_requested(self.settings)  # a bad PLADIS_KERNEL raises before the first armed call
        if self.settings.has_window:
            check_window_without_step_cache([model])
        settings = self.settings
        layers = text_attention_layers(model, family_of(model), settings.pladis_single_blocks, settings.pladis_layers)
        stack = ExitStack()
        installation = stack.enter_context(installed_pladis(model, layers))
        self._model, self._installation = model, stack
        self._call = PLADISCall(installation, settings, layers=frozenset(layers))

    def _start(self, module: torch.nn.Module, args: tuple) -> None:
        self._active = ExitStack()
        self._active.enter_context(calls_in_context((self._call,), replacing=(self._call.owner,)))

    def _end(self, module: torch.nn.Module, args: tuple, output: object) -> None:
        self.disarm()
        if output is None:  # the denoiser raised (torch calls always-called hooks with no output then)
            self.release()

    def disarm(self) -> None:
        """End the armed call's settings (if it started) and remove its hooks; the installation stays held."""
        if self._active is not None:
            active, self._active = self._active, None
            active.close()
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def release(self) -> None:
        """Disarm and give the denoiser its original processors back (when no other PLADIS call still uses them)."""
        self.disarm()
        if self._installation is not None:
            installation, self._installation = self._installation, None
            installation.close()
        self._model, self._call = None, None
