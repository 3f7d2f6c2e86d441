"""Which denoising step a denoiser call belongs to, for PLADIS step windows (`pladis_start` / `pladis_stop`).

The step is read on the host from the scheduler that steps the loop: its `step_index` (the position in its
`timesteps` of the step being taken; None before the first step) relative to its `begin_index` (where an
img2img call starts), out of `len(timesteps) − begin_index` steps. No tensor is read, so there is no
host–device sync. Schedulers that keep no step index (DDIM, DDPM, PNDM, ...) cannot place a call in the
window and are refused by name; modular pipelines can take the window from the guider instead
(`pipeline.guider.PLADISGuidance`).
"""

from __future__ import annotations

from collections.abc import Callable

StepSource = Callable[[], tuple[int, int]]


def tracks_steps(scheduler: object) -> bool:
    """Whether `scheduler` keeps the index of the step it takes (diffusers' `step_index` property)."""
    return hasattr(type(scheduler), "step_index") and hasattr(scheduler, "timesteps")


def check_step_scheduler(scheduler: object, where: str) -> None:
    """Raise a `ValueError` naming `scheduler`'s class when a step window cannot be placed with it (`where`
    says whose scheduler it is, e.g. "StableDiffusionXLPipeline.scheduler")."""
    if scheduler is None:
        raise ValueError(
            f"pladis_start/pladis_stop need the scheduler that steps the loop, and {where} is None: pass "
            "scheduler=<your scheduler> to apply_pladis, or use PLADISGuidance in a modular pipeline"
        )
    if not tracks_steps(scheduler):
        raise ValueError(
            f"pladis_start/pladis_stop need a scheduler that tracks its step index (Euler, Euler ancestral, "
            f"DPM-Solver++, UniPC, LCM, Heun, FlowMatch Euler, ...), but {where} is a {type(scheduler).__name__}, "
            "which does not; switch the scheduler (e.g. EulerDiscreteScheduler.from_config(pipe.scheduler.config)) "
            "or leave the window at 0..1"
        )


def scheduler_step(scheduler: object) -> tuple[int, int]:
    """(step, steps) of the denoiser call happening now: the scheduler's position from where this run began.
    Host integers only (never a tensor read)."""
    if not tracks_steps(scheduler):
        check_step_scheduler(scheduler, "the scheduler")
    timesteps = scheduler.timesteps
    if timesteps is None:
        raise RuntimeError(
            f"pladis_start/pladis_stop: {type(scheduler).__name__} has no timesteps yet; the denoiser was called "
            "before scheduler.set_timesteps(...)"
        )
    begin = getattr(scheduler, "begin_index", None) or 0
    index = scheduler.step_index
    return (begin if index is None else index) - begin, len(timesteps) - begin


def pipeline_step_source(pipe: object) -> StepSource:
    """The step of `pipe`'s current denoiser call, from whatever scheduler `pipe` holds at that moment."""
    return lambda: scheduler_step(pipe.scheduler)


def scheduler_step_source(scheduler: object) -> StepSource:
    """The step of the current denoiser call from `scheduler` (a hand-written loop's scheduler)."""
    return lambda: scheduler_step(scheduler)
