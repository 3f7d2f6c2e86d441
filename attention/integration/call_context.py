"""Per-call PLADIS state: which denoisers run PLADIS in the current context, with which settings.

Settings belong to the call, not to the shared model: `apply_pladis` puts them in a
`contextvars.ContextVar`, so calls in other threads (PLADIS with other settings, or stock pipelines
sharing the denoiser) never see them. The installed processors read it on every call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

from ..settings import PLADISSettings

# How the keys of an attention call are laid out: all text (cross-attention), a joint sequence with the
# text first (FLUX `[txt ; img]`) or last (SD3 `[img ; txt]`), or per-sample packed `[img ; txt ; pad]`.
CROSS, LEADING, TRAILING, PACKED = "cross", "leading", "trailing", "packed"
TEXT_KEYS = (CROSS, LEADING, TRAILING, PACKED)


@dataclass
class TextLength:
    """What the current denoiser call says about its text, for layers that are not told it.

    `tokens`: text tokens of a joint sequence (FLUX single-stream blocks get `[txt ; img]` already
    concatenated). `segments`: per sample `(image_tokens, text_tokens)` of a packed sequence `[img ; txt ; pad]`
    (Z-Image). Written from each denoiser call by the family's recorder (see `recorded_text_length`).
    """

    tokens: int | None = None
    segments: tuple[tuple[int, int], ...] | None = None


@dataclass
class CallSettings:
    """One PLADIS call on one denoiser: λ, α, the layers it acts on, its step window, and what its denoiser
    calls recorded. `owner` is the installation (or processor) these settings are for. The values come from
    a `PLADISSettings` (`pladis`, checked where it was made) and are trusted here.

    `layers`: the names of the layers this call runs PLADIS on (None: every layer holding its processor).
    `step`: where the step of each denoiser call comes from when the call has a window (None: every step);
    the denoiser's pre-hook sets `acting` from it before each denoiser call.
    """

    owner: object
    pladis_scale: float
    pladis_alpha: float
    layers: frozenset[str] | None = None
    step: Callable[[], tuple[int, int]] | None = None
    pladis: PLADISSettings | None = None
    acting: bool = True
    recorded: TextLength = field(default_factory=TextLength)

    def acts_on(self, layer: str) -> bool:
        """Whether this call runs PLADIS on `layer` in the denoiser call happening now."""
        return self.acting and (self.layers is None or layer in self.layers)

    def start_denoiser_call(self) -> None:
        """Place the coming denoiser call in the step window (from `step`: host integers, no sync)."""
        if self.step is not None and self.pladis is not None:
            self.acting = self.pladis.acts_on_step(*self.step())


@dataclass
class LayerCall:
    """What the attention call(s) inside one PLADIS layer call need (see `attention.integration.attention_calls`)."""

    pladis_scale: float
    pladis_alpha: float
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

    settings: tuple[CallSettings, ...] = ()
    running: LayerCall | None = None

    def for_owner(self, owner: object) -> CallSettings | None:
        for settings in self.settings:
            if settings.owner is owner:
                return settings
        return None


_ACTIVE: ContextVar[ActiveCalls | None] = ContextVar("pladis_active_calls", default=None)


def active_calls() -> ActiveCalls | None:
    """The PLADIS calls of the current context (None outside every `apply_pladis` body)."""
    return _ACTIVE.get()


@contextmanager
def calls_in_context(settings: tuple[CallSettings, ...], replacing: tuple[object, ...] = ()) -> Iterator[ActiveCalls]:
    """Make `settings` active in the current context for the body (those of other owners stay, those of
    `replacing` owners are dropped), and put the previous ones back on exit."""
    previous = _ACTIVE.get()
    kept = () if previous is None else tuple(s for s in previous.settings if s.owner not in replacing)
    calls = ActiveCalls(kept + settings)
    token = _ACTIVE.set(calls)
    try:
        yield calls
    finally:
        _ACTIVE.reset(token)
