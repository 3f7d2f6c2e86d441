"""Helpers for running the tiny pipelines in tests: fixed seed, 2 steps, 64×64, numpy output."""

from __future__ import annotations

import torch


def run_pipe(pipe, prompt: str = "a photo of a red cube", seed: int = 0, **kwargs):
    """Run a tiny pipeline for 2 steps at 64×64 from a fixed seed and return the numpy images."""
    kwargs = {"num_inference_steps": 2, "height": 64, "width": 64, "output_type": "np", **kwargs}
    return pipe(prompt, generator=torch.Generator("cpu").manual_seed(seed), **kwargs).images


def processors_by_name(model) -> dict:
    """A snapshot of the processor objects of `model` (compare with `is` to check restoration)."""
    return dict(model.attn_processors)


def processors_in_effect(model) -> dict:
    """Each layer's processor as the current context runs it: a per-call PAG/SEG layer's processor for this call,
    an installed PLADIS processor only where a PLADIS call is active here (else the original it runs)."""
    from attention.integration.processors import PLADISProcessor
    from attention.perturbation.perturbed_calls import PerturbableProcessor

    def in_effect(processor):
        if isinstance(processor, PerturbableProcessor):
            return in_effect(processor.in_effect())
        if isinstance(processor, PLADISProcessor) and processor.current_call() is None:
            return in_effect(processor.original)
        return processor

    return {name: in_effect(processor) for name, processor in model.attn_processors.items()}


def same_processor_objects(model, snapshot: dict) -> bool:
    """True when every layer of `model` holds exactly the processor object it held in `snapshot`."""
    current = model.attn_processors
    return current.keys() == snapshot.keys() and all(current[name] is snapshot[name] for name in snapshot)


class CallCounter:
    """Counts forward calls of a module through a removable forward pre-hook."""

    def __init__(self, module) -> None:
        self.count = 0
        self._handle = module.register_forward_pre_hook(self._hook)

    def _hook(self, module, args) -> None:
        self.count += 1

    def remove(self) -> None:
        self._handle.remove()
