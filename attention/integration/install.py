"""Installing PLADIS on a denoiser while PLADIS calls on it run, and putting the originals back.

`apply_pladis` finds a denoiser's text-attention layers from its family record (`diffusers_families`),
installs one PLADIS processor per layer while any PLADIS call on that denoiser is active (reference-counted
per denoiser, so overlapping calls in several threads share one installation), and gives the call its own
settings in a `ContextVar` (`attention.integration.call_context`): the installed processors run PLADIS with the settings
of the call in their context and the original processor everywhere else. When the last call ends, every
layer gets its exact original processor object back and every hook is removed, also when a call raises.
`swapped_attn_processors` is the plain swap-for-a-block used by the attention-map recorder and the benchmark.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar

import torch
from diffusers.models.attention_processor import Attention
from diffusers.pipelines.pag.pag_utils import PAGMixin

from ..kernels.table import kernel_requested
from ..settings import PLADISSettings, settings_from
from ..validation import layers_named, names_matching
from .call_context import PLADISCall, active_calls, calls_in_context
from .composition import check_window_without_step_cache
from .context_parallel import check_context_parallel, rank_text_length
from .diffusers_families import Family, TextAttention, family_of, registered_families, supported_families
from .processors import PLADISProcessor, pladis_processor_class
from .single_use import SingleUseBlock
from .steps import StepSource, check_step_scheduler, pipeline_step_source, scheduler_step_source

_PROCESSOR_SUFFIX = ".processor"
_LOCK = threading.Lock()  # guards every Installation and their table (never held during a denoiser call)


def attention_model(model: object) -> torch.nn.Module:
    """`model` (the module inside it if `torch.compile` wrapped it) when it is a diffusers model whose
    attention processors can be swapped (or a denoiser of a registered family); a `TypeError` naming its class
    otherwise."""
    model = getattr(model, "_orig_mod", model)
    if isinstance(model, torch.nn.Module) and family_of(model).denoisers:
        return model
    if not isinstance(model, torch.nn.Module) or not all(
        hasattr(type(model), attribute) for attribute in ("attn_processors", "set_attn_processor")
    ):
        raise TypeError(
            f"PLADIS needs a diffusers model with attention processors (`attn_processors` / `set_attn_processor`), "
            f"got {type(model).__name__}; it supports {supported_families()}"
        )
    return model


def attention_modules(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The attention modules of `model` by layer name (`model.attn_processors`' names without `.processor`;
    for a model without that table, every submodule with a settable processor)."""
    model = attention_model(model)
    if not hasattr(type(model), "attn_processors"):
        return {
            name: module
            for name, module in model.named_modules()
            if hasattr(module, "set_processor") and hasattr(module, "processor")
        }
    return {
        name[: -len(_PROCESSOR_SUFFIX)]: model.get_submodule(name[: -len(_PROCESSOR_SUFFIX)])
        for name in model.attn_processors
    }


def set_processors(model: torch.nn.Module, replacements: dict[str, object]) -> None:
    """Set `replacements` (layer name → processor), keeping every other layer's processor object."""
    if not replacements:
        return
    modules = attention_modules(model)
    if not hasattr(type(model), "set_attn_processor"):
        for name, processor in replacements.items():
            modules[name].set_processor(processor)
        return
    table = {f"{name}{_PROCESSOR_SUFFIX}": replacements.get(name, module.processor) for name, module in modules.items()}
    model.set_attn_processor(table)  # set_attn_processor needs one entry per layer (and empties the dict)


def restore_originals(model: torch.nn.Module, processors: Mapping[str, Any]) -> None:
    """Give every layer of `model` still holding one of `processors` (layer name → a processor with an `original`)
    that original back; a layer someone else has set since keeps what it has."""
    modules = attention_modules(model)
    set_processors(model, {name: p.original for name, p in processors.items() if modules[name].processor is p})


@contextmanager
def swapped_attn_processors(model: torch.nn.Module, replacements: dict[str, object]) -> Iterator[None]:
    """Set `replacements` (layer name → processor) on `model`, and restore the exact previous
    processor objects on exit, also when the body raises. Unknown layer names raise `ValueError`."""
    model = attention_model(model)
    if not isinstance(replacements, dict) or not all(isinstance(name, str) for name in replacements):
        raise TypeError(f"replacements must be a dict of layer name -> processor, got {type(replacements).__name__}")
    original = {name: module.processor for name, module in attention_modules(model).items()}
    unknown = sorted(set(replacements) - set(original))
    if unknown:
        raise ValueError(f"unknown attention layer names for {type(model).__name__}: {unknown[:5]}")
    set_processors(model, replacements)
    try:
        yield
    finally:
        set_processors(model, _without_ended_installations(original))


def _without_ended_installations(processors: dict[str, object]) -> dict[str, object]:
    """`processors` with the PLADIS processors of installations that have ended (a snapshot taken while
    another call's PLADIS was installed, restored after that call ended) replaced by their originals."""
    with _LOCK:
        return {
            name: processor.original
            if isinstance(processor, PLADISProcessor)
            and processor.installed_by is not None
            and processor.installed_by.users == 0
            else processor
            for name, processor in processors.items()
        }


@dataclass(frozen=True)
class TextLayer:
    """A layer PLADIS acts on: its module, its kind in the family record, its original processor and
    the stock processor whose code runs with PLADIS there."""

    module: torch.nn.Module
    kind: TextAttention
    original: object
    runs_as: type


def _original_processor(module: torch.nn.Module) -> object:
    """The layer's processor, seen through a PLADIS processor installed by a call still running."""
    processor = module.processor
    if isinstance(processor, PLADISProcessor) and processor.installed_by is not None:
        return processor.original
    return processor


PLADIS_LAYER_EXAMPLES = (
    "'mid', 'down_blocks.2', 'up_blocks.0.attentions.1', 'transformer_blocks.3', 'single_transformer_blocks'"
)


def text_attention_candidates(
    model: torch.nn.Module, family: Family
) -> dict[str, tuple[torch.nn.Module, TextAttention]]:
    """Every text-attention layer of `model` by name (optional kinds included), with its kind; a model without
    any raises, naming its class."""
    candidates = {}
    for name, module in attention_modules(model).items():
        kind = next((kind for kind in family.text_attention if kind.selects(name, module)), None)
        if kind is not None:
            candidates[name] = (module, kind)
    if not candidates:
        raise ValueError(
            f"PLADIS found no cross-attention or joint text-image attention layer in {type(model).__name__}; it needs "
            f"a denoiser with softmax text attention ({supported_families()})"
        )
    return candidates


def chosen_layer_names(
    candidates: dict[str, tuple[torch.nn.Module, TextAttention]],
    single_blocks: bool,
    layer_ids: tuple[str, ...] | None = None,
    *,
    every_id_names_one: bool = True,
) -> list[str]:
    """The names of the `candidates` PLADIS acts on: those `layer_ids` name (`pag_applied_layers` semantics;
    with `every_id_names_one`, an id naming none is a `ValueError` naming it), or by default every non-optional
    kind (optional ones too with `single_blocks`); in the model's order."""
    if layer_ids is None:
        return [name for name, (module, kind) in candidates.items() if not kind.optional or single_blocks]
    if every_id_names_one:
        layers_named("pladis_layers", layer_ids, candidates, "text-attention", PLADIS_LAYER_EXAMPLES)
    return names_matching(layer_ids, candidates)


def text_attention_layers(
    model: torch.nn.Module,
    family: Family,
    single_blocks: bool,
    layer_ids: tuple[str, ...] | None = None,
    *,
    every_id_names_one: bool = True,
) -> dict[str, TextLayer]:
    """The layers of `model` PLADIS acts on (`chosen_layer_names`), checked: a layer holding a processor its
    record does not name (a custom one) raises, since replacing it would drop what it does and keeping it would
    silently run without PLADIS; so does a model without any."""
    layers = {}
    candidates = text_attention_candidates(model, family)
    for name in chosen_layer_names(candidates, single_blocks, layer_ids, every_id_names_one=every_id_names_one):
        module, kind = candidates[name]
        original = _original_processor(module)
        runs_as = kind.runs_as(original)  # a PLADIS processor set by hand: this call's settings replace its own
        if runs_as is None:
            stock = kind.processor_names()
            raise ValueError(
                f"PLADIS cannot replace {type(original).__name__} on {name} (what it does would be dropped); "
                f"{kind.blocks} of {type(model).__name__} run PLADIS with the stock processors {', '.join(stock)} "
                "(IP-Adapters from load_ip_adapter included): unload or reset that layer's processor"
            )
        if isinstance(module, Attention) and not getattr(module, "scale_qk", True):
            raise ValueError(f"PLADIS needs the standard 1/sqrt(head_dim) logit scale, but {name} has scale_qk=False")
        layers[name] = TextLayer(module, kind, original, runs_as)
    return layers


def pladis_processors(
    model: torch.nn.Module, pladis_scale: float | PLADISSettings, pladis_alpha: float = 1.5
) -> dict[str, object]:
    """One PLADIS processor with fixed settings per default text-attention layer of `model` (for
    `swapped_attn_processors`); a model with none raises, naming its class. `pladis_scale` is λ, or a
    `PLADISSettings` holding every setting (then leave `pladis_alpha` at its default)."""
    settings = settings_from(pladis_scale, pladis_alpha=pladis_alpha)
    model = attention_model(model)
    return {
        name: pladis_processor_class(layer.runs_as)(settings, text_keys=layer.kind.text_keys, original=layer.original)
        for name, layer in text_attention_layers(model, family_of(model), False).items()
    }


class Installation:
    """The PLADIS processors (and the recording hook) on one denoiser while PLADIS calls on it are active."""

    def __init__(self, model: torch.nn.Module, family: Family) -> None:
        self.model, self.family = model, family
        self.users = 0
        self.processors: dict[str, PLADISProcessor] = {}
        self._hook = None

    def add(self, layers: dict[str, TextLayer]) -> None:
        """Install PLADIS processors on the `layers` not yet covered (a call asking for more blocks adds them)."""
        new = {
            name: pladis_processor_class(layer.runs_as).installed(
                layer.original, layer.kind.text_keys, name, self, layer.kind.image_context_calls
            )
            for name, layer in layers.items()
            if name not in self.processors
        }
        set_processors(self.model, new)
        self.processors.update(new)
        if self._hook is None:
            self._hook = self.model.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        """Place this denoiser call in the step window of the call it belongs to, and record its text layout."""
        calls = active_calls()
        call = None if calls is None else calls.for_owner(self)
        if call is not None:
            call.start_denoiser_call()
            if self.family.record is not None:
                call.recorded = rank_text_length(self.model, self.family.name, self.family.record(args, kwargs))

    def remove(self) -> None:
        """Give every layer still holding one of our processors its original back; remove the hook."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        restore_originals(self.model, self.processors)
        self.processors = {}


class SharedOnModel(Protocol):
    """What `shared_on_model` shares: the model it sits on, how many calls use it, and how it leaves the model."""

    model: torch.nn.Module
    users: int

    def remove(self) -> None: ...


Shared = TypeVar("Shared", bound=SharedOnModel)


@contextmanager
def shared_on_model(
    table: dict[int, Shared],
    model: torch.nn.Module,
    make: Callable[[], Shared],
    join: Callable[[Shared], None] | None = None,
) -> Iterator[Shared]:
    """The object `table` holds for `model` (made by `make()` when it holds none) for the body, shared with the other
    calls running on that model: `join(shared)` runs under the lock as a call enters (when it raises, an object no
    call uses is removed again), and the last call to leave removes it from `table` and from the model."""
    with _LOCK:
        shared = table.get(id(model))
        if shared is None or shared.model is not model:
            shared = make()
        if join is not None:
            try:
                join(shared)
            except BaseException:
                if shared.users == 0:
                    shared.remove()
                raise
        shared.users += 1
        table[id(model)] = shared
    try:
        yield shared
    finally:
        with _LOCK:
            shared.users -= 1
            if shared.users == 0:
                del table[id(model)]
                shared.remove()


_INSTALLATIONS: dict[int, Installation] = {}


@contextmanager
def installed_pladis(model: torch.nn.Module, layers: dict[str, TextLayer]) -> Iterator[Installation]:
    """PLADIS processors on `layers` of `model` for the body, shared with the other calls running on it;
    the last call to leave restores the original processors."""
    with shared_on_model(
        _INSTALLATIONS, model, lambda: Installation(model, family_of(model)), lambda shared: shared.add(layers)
    ) as installation:
        yield installation


def denoisers(pipe_or_denoiser: object, pladis_controlnet: bool = False) -> list[torch.nn.Module]:
    """The models PLADIS goes on: a denoiser given directly, else the pipeline's `unet` or `transformer`
    (and, with `pladis_controlnet`, its ControlNet(s)); a clear error when there is none."""
    if isinstance(getattr(pipe_or_denoiser, "_orig_mod", pipe_or_denoiser), torch.nn.Module):
        if pladis_controlnet:
            raise ValueError(
                "pladis_controlnet=True needs a pipeline with a controlnet, got a bare "
                f"{type(pipe_or_denoiser).__name__}: pass the ControlNet to its own apply_pladis"
            )
        return [attention_model(pipe_or_denoiser)]
    model = next(
        (
            getattr(pipe_or_denoiser, attribute)
            for attribute in ("unet", "transformer")
            if getattr(pipe_or_denoiser, attribute, None) is not None
        ),
        None,
    )
    if model is None:
        raise TypeError(
            f"apply_pladis needs a diffusers pipeline with a `unet` or `transformer`, or a denoiser model, got "
            f"{type(pipe_or_denoiser).__name__}"
        )
    models = [attention_model(model)]
    if pladis_controlnet:
        controlnet = getattr(pipe_or_denoiser, "controlnet", None)
        if controlnet is None:
            raise ValueError(f"pladis_controlnet=True but {type(pipe_or_denoiser).__name__} has no controlnet")
        models += [attention_model(net) for net in getattr(controlnet, "nets", [controlnet])]
    return models


def check_pag_leaves_pladis_layers(pipe: object, model: torch.nn.Module, table: dict[str, object]) -> None:
    """Raise when `pipe` is a diffusers PAG pipeline whose PAG layers include layers PLADIS needs.

    PAG gives its layers its own processors during the call (`PAGMixin`: self-attention modules
    whose name matches a `pag_applied_layers` pattern). In U-Nets, PixArt and SANA those are `attn1`
    and PLADIS is on `attn2`; SD3's joint attention is both, and PAG would silently replace PLADIS there.
    """
    patterns = getattr(pipe, "pag_applied_layers", None) if isinstance(pipe, PAGMixin) else None
    if not patterns:
        return
    modules = attention_modules(model)
    taken = sorted(
        name
        for name in table
        if isinstance(modules[name], Attention)
        and not modules[name].is_cross_attention
        and any(re.search(pattern, name) for pattern in patterns)
    )
    if taken:
        raise ValueError(
            f"PAG on {type(pipe).__name__} replaces the processors of {taken[:3]} during the call, the joint "
            "text-image attention PLADIS acts on; PLADIS with PAG works where PAG's layers are self-attention "
            "(SDXL, SD 1.5, PixArt, SANA). For PLADIS here, load the pipeline without PAG (e.g. "
            "StableDiffusion3Pipeline.from_pipe(pipe)), or set pag_applied_layers to layers PLADIS does not use"
        )


def apply_pladis(
    pipe_or_denoiser: object,
    pladis_scale: float | PLADISSettings,
    pladis_alpha: float = 1.5,
    *,
    pladis_controlnet: bool = False,
    pladis_single_blocks: bool = False,
    pladis_start: float = 0.0,
    pladis_stop: float = 1.0,
    pladis_layers: str | list[str] | None = None,
    scheduler: object | None = None,
) -> SingleUseBlock[None]:
    """Run the body with PLADIS on the text-attention layers of a pipeline's denoiser, or of a denoiser
    given directly (`UNet2DConditionModel` or a transformer: modular pipelines, hand-written loops).

    Which layers and which rule come from the denoiser's family record (`attention.integration.diffusers_families`):
    cross-attention layers (U-Nets, PixArt, SANA, SANA-Video, Wan, LTX-Video) get the cross-attention rule;
    joint text+image attention (SD3, FLUX.1/.2, Chroma, Qwen-Image, HunyuanVideo, HunyuanImage, CogView4;
    Z-Image's packed unified blocks) gets the text-block rule on the image-query × text-key block;
    `pladis_single_blocks=True` adds the single-stream blocks of FLUX.1/.2, Chroma and the Hunyuan models. With
    `pladis_controlnet=True`, the pipeline's ControlNet(s) too. λ = 0 leaves the model untouched (stock
    attention, bit-identical output).

    `pladis_layers` picks layers instead, by ids with the semantics of diffusers' `pag_applied_layers`
    ("mid", "down_blocks.2", "up_blocks.0.attentions.1", "transformer_blocks.3", "single_transformer_blocks")
    matched against the text-attention module names; an id naming none raises. `pladis_start` / `pladis_stop`
    restrict PLADIS to the denoising steps i of N with int(start·N) <= i < int(stop·N); the step of each
    denoiser call is read from the pipeline's scheduler (for a bare denoiser: from `scheduler`, the one the
    loop steps; modular pipelines can use `pipeline.guider.PLADISGuidance` instead).

    The settings belong to this call: other calls sharing the denoiser in other threads (PLADIS with
    their own settings, or stock pipelines) get exactly what they get alone. Everything is checked before
    anything changes; once the last PLADIS call on the denoiser ends, its exact previous processors are
    back and its hooks removed, also when the body raises. A model without text attention, a layer
    holding a processor PLADIS does not know (e.g. an IP-Adapter), PAG layers on the layers PLADIS
    needs (SD3's PAG pipelines), a window with a scheduler that keeps no step index or on a denoiser with a
    step cache raise instead of running without PLADIS.

    The settings are a `ContextVar` of the thread (or asyncio task) that enters the block: calls made inside the
    block from a new thread or an executor run without PLADIS, unless they run in a copy of this context
    (`asyncio.to_thread`, `contextvars.copy_context().run`). Enter each returned block once, and let it end in
    the thread that entered it: otherwise a `RuntimeError` says so.

    `pladis_scale` may be a `PLADISSettings` in place of λ, holding every setting (pipelines that check their
    arguments before their own set-up pass theirs; then leave the other PLADIS arguments at their defaults).
    """
    settings = settings_from(
        pladis_scale,
        pladis_alpha=pladis_alpha,
        pladis_controlnet=pladis_controlnet,
        pladis_single_blocks=pladis_single_blocks,
        pladis_start=pladis_start,
        pladis_stop=pladis_stop,
        pladis_layers=pladis_layers,
    )
    return SingleUseBlock("apply_pladis", _applied(pipe_or_denoiser, settings, scheduler))


def _step_source(pipe_or_denoiser: object, settings: PLADISSettings, scheduler: object | None) -> StepSource | None:
    """Where the step of each denoiser call comes from (None without a window): `scheduler` when given, else the
    pipeline's scheduler; a bare denoiser without `scheduler` cannot place its calls, and is refused."""
    if not settings.has_window:
        return None
    if scheduler is not None:
        check_step_scheduler(scheduler, "scheduler")
        return scheduler_step_source(scheduler)
    if isinstance(getattr(pipe_or_denoiser, "_orig_mod", pipe_or_denoiser), torch.nn.Module):
        raise ValueError(
            f"pladis_start/pladis_stop on a bare {type(pipe_or_denoiser).__name__} need the steps of its loop: pass "
            "scheduler=<the scheduler the loop steps> to apply_pladis, or wrap the guider of a modular pipeline in "
            "PLADISGuidance"
        )
    check_step_scheduler(getattr(pipe_or_denoiser, "scheduler", None), f"{type(pipe_or_denoiser).__name__}.scheduler")
    return pipeline_step_source(pipe_or_denoiser)


def settings_in_context(pipe_or_denoiser: object) -> PLADISSettings | None:
    """The settings an enclosing `apply_pladis` in this context gave the denoiser of `pipe_or_denoiser` (None
    when none did, or when it turned PLADIS off), so a pipeline call can keep what it does not set itself."""
    calls = active_calls()
    installation = _INSTALLATIONS.get(id(denoisers(pipe_or_denoiser)[0]))
    if calls is None or installation is None:
        return None
    call = calls.for_owner(installation)
    return None if call is None else call.settings


def settings_of_call(pipe_or_denoiser: object, given: Mapping[str, Any]) -> PLADISSettings | None:
    """The PLADIS settings of a pipeline call whose PLADIS keywords default to None ("not given"): None when it
    gives none (whatever an enclosing `apply_pladis` set stays in force), else the enclosing call's settings
    (`PLADISSettings(0.0)` when none) with the given keywords replacing theirs, checked once. A given layer
    choice replaces an enclosing `pladis_single_blocks=True`, and the other way round (one choice of layers)."""
    given = {name: value for name, value in given.items() if value is not None}
    if not given:
        return None
    enclosing = settings_in_context(pipe_or_denoiser)
    if enclosing is None:
        return PLADISSettings(**{"pladis_scale": 0.0, **given})
    if "pladis_layers" in given:
        given.setdefault("pladis_single_blocks", False)
    if given.get("pladis_single_blocks"):
        given.setdefault("pladis_layers", None)
    return replace(enclosing, **given)


@contextmanager
def _applied(pipe_or_denoiser: object, settings: PLADISSettings, scheduler: object | None) -> Iterator[None]:
    """The body of `apply_pladis` on its checked `settings`."""
    pladis_single_blocks = settings.pladis_single_blocks
    models = denoisers(pipe_or_denoiser, settings.pladis_controlnet)
    family = family_of(models[0])
    if pladis_single_blocks and not any(kind.optional for kind in family.text_attention):
        with_single = ", ".join(
            f.name for f in registered_families() if any(kind.optional for kind in f.text_attention)
        )
        raise ValueError(
            f"pladis_single_blocks=True but {type(models[0]).__name__} has no single-stream block "
            f"({with_single} have them)"
        )
    if settings.pladis_scale == 0.0:
        if settings.pladis_layers is not None:  # a mistyped layer id fails even where PLADIS is off
            chosen_layer_names(text_attention_candidates(models[0], family), False, settings.pladis_layers)
        # Off for this call, also where an enclosing call in this context turned PLADIS on for these models.
        running = tuple(installation for installation in map(_INSTALLATIONS.get, map(id, models)) if installation)
        with calls_in_context((), replacing=running):
            yield
        return
    kernel_requested(settings)  # a bad PLADIS_KERNEL raises before the first denoising step (λ = 0: never read)
    step = _step_source(pipe_or_denoiser, settings, scheduler)
    if step is not None:
        check_window_without_step_cache(models)
    # pladis_layers names layers of the denoiser; a ControlNet gets those of them it has (maybe none).
    layers = [
        text_attention_layers(
            model, family_of(model), pladis_single_blocks, settings.pladis_layers, every_id_names_one=index == 0
        )
        for index, model in enumerate(models)
    ]
    check_pag_leaves_pladis_layers(pipe_or_denoiser, models[0], layers[0])
    for model, table in zip(models, layers, strict=True):
        check_context_parallel(
            model,
            family_of(model).name,
            {layer.kind.text_keys for layer in table.values()},
            recorded_text=family_of(model).record is not None and any(layer.kind.optional for layer in table.values()),
        )
    with ExitStack() as stack:
        installations = tuple(
            stack.enter_context(installed_pladis(model, table)) for model, table in zip(models, layers, strict=True)
        )
        calls = tuple(
            PLADISCall(installation, settings, layers=frozenset(table), step=step)
            for installation, table in zip(installations, layers, strict=True)
        )
        stack.enter_context(calls_in_context(calls, replacing=installations))
        yield
