"""Per-call PLADIS state: which denoisers run PLADIS in the current context, with which settings.

Settings belong to the call, not to the shared model: `apply_pladis` puts them in a
`contextvars.ContextVar`, so calls in other threads (PLADIS with other settings, or stock pipelines
sharing the denoiser) never see them. The installed processors read it on every call. The one
`PLADISSettings` object a call was given travels as it is, through `PLADISCall` and `LayerCall`, to the kernels.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

from ..settings import PLADISSettings
from .text_layout import TextLength


@dataclass
class PLADISCall:
    """One PLADIS call on one denoiser: its `settings` (checked where they were made, trusted here), the layers it
    acts on, its step window, and what its denoiser calls recorded. `owner` is the installation (or processor)
    these settings are for.

    `layers`: the names of the layers this call runs PLADIS on (None: every layer holding its processor).
    `step`: where the step of each denoiser call comes from when the call has a window (None: every step);
    the denoiser's pre-hook sets `acting` from it before each denoiser call.
    """

    owner: object
    settings: PLADISSettings
    layers: frozenset[str] | None = None
    step: Callable[[], tuple[int, int]] | None = None
    acting: bool = True
    recorded: TextLength = field(default_factory=TextLength)

    def acts_on(self, layer: str) -> bool:
        """Whether this call runs PLADIS on `layer` in the denoiser call happening now."""
        return self.acting and (self.layers is None or layer in self.layers)

    def start_denoiser_call(self) -> None:
        """Place the coming denoiser call in the step window (from `step`: host integers, no sync)."""
        if self.step is not None:
            self.acting = self.settings.acts_on_step(*self.step())


@dataclass
class LayerCall:
    """What the attention call(s) inside one PLADIS layer call need (see `attention_calls`)."""

    settings: PLADISSettings
    text_keys: str
    text_tokens: int | None = None
    segments: tuple[tuple[int, int], ...] | None = None
    dense_calls: int = 0  # leading attention calls of the layer that are not on text (Wan's image context)
    family: str = ""  # the model family (errors name it)
    text_done: bool = False  # the call on text has run: later ones (an IP-Adapter's image prompt) stay dense


@dataclass
class ActiveCalls:
    """The PLADIS calls active in one context, and the PLADIS layer running now (set by the processor,
    read by its attention call). Mutated in place, never re-set, so `torch.compile` can trace it."""

    calls: tuple[PLADISCall, ...] = ()
    running: LayerCall | None = None

    def for_owner(self, owner: object) -> PLADISCall | None:
        for call in self.calls:
            if call.owner is owner:
                return call
        return None


_ACTIVE: ContextVar[ActiveCalls | None] = ContextVar("pladis_active_calls", default=None)


def active_calls() -> ActiveCalls | None:
    """The PLADIS calls of the current context (None outside every `apply_pladis` body)."""
    return _ACTIVE.get()


@contextmanager
def calls_in_context(calls: tuple[PLADISCall, ...], replacing: tuple[object, ...] = ()) -> Iterator[ActiveCalls]:
    """Make `calls` active in the current context for the body (those of other owners stay, those of
    `replacing` owners are dropped), and put the previous ones back on exit."""
    previous = _ACTIVE.get()
    kept = () if previous is None else tuple(call for call in previous.calls if call.owner not in replacing)
    active = ActiveCalls(kept + calls)
    token = _ACTIVE.set(active)
    try:
        yield active
    finally:
        _ACTIVE.reset(token)
