"""Per-call perturbed self-attention (PAG, SEG) on a denoiser that several calls share.

diffusers' PAG loop swaps the processors of its layers on the shared denoiser for the loop and sets its saved
table back at the end, so two overlapping calls restore each other's processors (and the last one leaves its
perturbation on the model for good). Here the perturbation belongs to the call, as PLADIS's settings do: while
any perturbed call on a denoiser runs, every self-attention layer holds a `PerturbableProcessor`
(reference-counted, one installation per denoiser) that runs the perturbation processor of the call in the
current context on that call's layers, and the layer's original processor everywhere else.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch
from diffusers.models.attention_processor import Attention

from ..integration.diffusers_families import family_of
from ..integration.install import (
    attention_modules,
    installed_pladis,
    restore_originals,
    set_processors,
    shared_on_model,
    text_attention_layers,
)
from ..integration.latent_grid import LatentSize
from ..validation import names_matching


def self_attention_layer_names(model: torch.nn.Module) -> list[str]:
    """Names of the self-attention (`attn1`) layers of `model`: what PAG / SEG layer ids are matched against."""
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, Attention) and not module.is_cross_attention
    ]


def perturbed_layer_names(model: torch.nn.Module, layer_ids: Iterable[str]) -> frozenset[str]:
    """The self-attention layers of `model` that PAG layer ids name, by diffusers' own matching rule."""
    return frozenset(names_matching(layer_ids, self_attention_layer_names(model)))


@dataclass
class PerturbedCall:
    """One PAG/SEG call on one denoiser: the layers it perturbs and the processor it runs there (none until
    its loop starts), and the latent size of its own denoiser calls (SEG's token grid)."""

    owner: PerturbableLayers
    layers: frozenset[str] = frozenset()
    processor: object | None = None
    latent_size: LatentSize = field(default_factory=LatentSize)

    def perturb(self, layers: frozenset[str], processor: object) -> None:
        """From now on, run `processor` on `layers` in this call (what `PAGMixin._set_pag_attn_processor` does
        to the whole model)."""
        if not layers:
            raise ValueError("a perturbed-guidance call needs at least one self-attention layer to perturb")
        unknown = sorted(layers - set(self.owner.processors))
        if unknown:
            raise ValueError(f"not self-attention layers of {type(self.owner.model).__name__}: {unknown[:3]}")
        self.layers, self.processor = layers, processor


_CALLS: ContextVar[tuple[PerturbedCall, ...]] = ContextVar("perturbed_self_attention_calls", default=())


def current_perturbed_call(model: torch.nn.Module) -> PerturbedCall | None:
    """The perturbed call on `model` in the current context (None outside every such call)."""
    return next((call for call in reversed(_CALLS.get()) if call.owner.model is model), None)


def _named_keywords(processor: object, kwargs: dict) -> dict:
    """The keyword arguments `processor` would get from diffusers' `Attention.forward`: those its `__call__` names."""
    parameters = inspect.signature(processor.__call__).parameters
    return {name: value for name, value in kwargs.items() if name in parameters}


class PerturbableProcessor:
    """Set on a self-attention layer while perturbed calls on its denoiser run: the perturbation processor of
    the call in the current context where that call perturbs this layer, else exactly `original`.

    Use `perturbable_processor_class(type(original))`: its `__call__` shows the original's signature, so
    diffusers passes it the keyword arguments it passes the original.
    """

    def __init__(self, name: str, original: object, owner: PerturbableLayers) -> None:
        self.name, self.original, self.owner = name, original, owner

    def __repr__(self) -> str:
        return f"{type(self).__name__}(original={type(self.original).__name__})"

    def in_effect(self) -> object:
        """The processor this layer runs in the current context."""
        call = current_perturbed_call(self.owner.model)
        if call is not None and call.processor is not None and self.name in call.layers:
            return call.processor
        return self.original

    def _call(self, attn: torch.nn.Module, args: tuple, kwargs: dict):
        processor = self.in_effect()
        if processor is not self.original:
            kwargs = _named_keywords(processor, kwargs)
        return processor(attn, *args, **kwargs)


_CLASSES: dict[type, type] = {}


def perturbable_processor_class(original_type: type) -> type:
    """The `PerturbableProcessor` class for layers holding an `original_type` processor (one per type)."""
    if original_type not in _CLASSES:

        def __call__(self, attn, *args, **kwargs):
            return self._call(attn, args, kwargs)

        __call__.__signature__ = inspect.signature(original_type.__call__)
        _CLASSES[original_type] = type(
            f"Perturbable{original_type.__name__}",
            (PerturbableProcessor,),
            {"__call__": __call__, "__module__": __name__},
        )
    return _CLASSES[original_type]


class PerturbableLayers:
    """The `PerturbableProcessor`s on every self-attention layer of one denoiser, and the hook recording each
    denoiser call's latent size into the perturbed call it belongs to, while any perturbed call runs."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.users = 0
        modules = attention_modules(model)
        self.processors = {
            name: perturbable_processor_class(type(modules[name].processor))(name, modules[name].processor, self)
            for name in self_attention_layer_names(model)
        }
        set_processors(model, dict(self.processors))
        self._hook = model.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        call = current_perturbed_call(self.model)
        if call is not None:
            call.latent_size.record_call(args, kwargs)

    def remove(self) -> None:
        """Give every layer still holding one of our processors its original back; remove the hook."""
        self._hook.remove()
        restore_originals(self.model, self.processors)


_INSTALLATIONS: dict[int, PerturbableLayers] = {}


@contextmanager
def _perturbable_layers(model: torch.nn.Module) -> Iterator[PerturbableLayers]:
    """`PerturbableLayers` on `model` for the body, shared with the other perturbed calls on it; the last one to
    leave restores the original processors."""
    with shared_on_model(_INSTALLATIONS, model, lambda: PerturbableLayers(model)) as layers:
        yield layers


@contextmanager
def perturbed_call(model: torch.nn.Module) -> Iterator[PerturbedCall]:
    """One PAG/SEG call on `model` (a U-Net shared with other calls): yields its `PerturbedCall`, which
    perturbs nothing until `perturb` is called, and which no call in another context sees.

    For the call, `model`'s processor table also stays as it is: diffusers' PAG loop saves the whole table when
    its loop starts and sets it back when it ends, which would undo what overlapping calls installed meanwhile.
    So PLADIS's reference-counted processors stay on the cross-attention layers for the call too (they run
    the original processor wherever no PLADIS call is active); where a layer holds a processor PLADIS cannot
    replace, no PLADIS call can install on this model, so there is nothing to hold.
    """
    with ExitStack() as stack:
        try:
            text_layers = text_attention_layers(model, family_of(model), False)
        except ValueError:
            text_layers = None
        if text_layers is not None:
            stack.enter_context(installed_pladis(model, text_layers))
        call = PerturbedCall(stack.enter_context(_perturbable_layers(model)))
        token = _CALLS.set((*_CALLS.get(), call))
        stack.callback(_CALLS.reset, token)
        yield call
