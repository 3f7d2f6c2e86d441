"""What `--pipeline` and `--scheduler` can name: the PLADIS pipeline classes (imported only when chosen)
and the distilled-model schedulers, with what a pipeline call accepts.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, fields
from typing import Any

from attention.settings import PLADISSettings
from pipeline.guidance import GUIDANCE_ARGUMENTS

from .assets import TINY_FLUX_SCHNELL, TINY_SDXL, TINY_SDXL_CONTROLNET, repository_relative

DTYPE_NAMES = ("bfloat16", "float16", "float32")  # --dtype: the torch dtypes of these names (loading.DTYPES)

# Command-line option → pipeline call argument, forwarded only when given and accepted by the class: the
# guidance arguments the pipelines define (pipeline/guidance.py), and one more of the ControlNet pipeline.
CALL_OPTIONS = {
    **{argument.option: argument.name for argument in GUIDANCE_ARGUMENTS if argument.option is not None},
    "controlnet_scale": "controlnet_conditioning_scale",
}
LAYER_OPTIONS = tuple(argument.option for argument in GUIDANCE_ARGUMENTS if argument.kind is list)
# The PLADIS options every generation takes besides λ (their defaults `PLADISSettings`'): PLADIS pipelines get
# them as call arguments, stock pipelines (--pipeline auto) through apply_pladis.
PLADIS_OPTIONS = {
    field.name: field.default
    for field in fields(PLADISSettings)
    if field.name in ("pladis_alpha", "pladis_start", "pladis_stop", "pladis_layers")
}


def pladis_arguments(args: Any) -> dict[str, Any]:
    """The PLADIS arguments (besides λ) the options give: α, the step window and the layers."""
    return {name: getattr(args, name, default) for name, default in PLADIS_OPTIONS.items()}


@dataclass(frozen=True)
class PipelineChoice:
    """A `--pipeline` choice: where its class lives, its tiny default model and its usual settings."""

    module: str
    class_name: str
    tiny_model: str  # relative to the repository root
    steps: int
    guidance_scale: float | None  # None: the pipeline's own default


PIPELINES: dict[str, PipelineChoice] = {
    "sdxl": PipelineChoice(
        "pipeline.pipeline_sdxl", "PLADISStableDiffusionXLPipeline", repository_relative(TINY_SDXL), 25, 5.0
    ),
    "sdxl-seg": PipelineChoice(
        "pipeline.pipeline_sdxl_seg", "PLADISStableDiffusionXLSEGPipeline", repository_relative(TINY_SDXL), 25, 5.0
    ),
    "controlnet": PipelineChoice(
        "pipeline.pipeline_controlnet",
        "PLADISStableDiffusionXLControlNetPipeline",
        repository_relative(TINY_SDXL_CONTROLNET),
        25,
        5.0,
    ),
    "flux": PipelineChoice(
        "pipeline.pipeline_flux_pladis", "PLADISFluxPipeline", repository_relative(TINY_FLUX_SCHNELL), 28, 3.5
    ),
    # Any pipeline of a supported family, as its stock class (model_index.json), with PLADIS through apply_pladis.
    "auto": PipelineChoice("diffusers", "DiffusionPipeline", repository_relative(TINY_SDXL), 28, None),
}
FLUX_DISTILLED_STEPS = 4  # FLUX.1-schnell and other timestep-distilled FLUX models

# Distilled SDXL recipes: DMD2 → LCM, SDXL-Lightning → Euler "trailing", Hyper-SDXL → DDIM "trailing".
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "lcm": ("LCMScheduler", {}),
    "euler-trailing": ("EulerDiscreteScheduler", {"timestep_spacing": "trailing"}),
    "ddim-trailing": ("DDIMScheduler", {"timestep_spacing": "trailing"}),
}


def pipeline_class(name: str) -> type:
    """The PLADIS pipeline class of a `--pipeline` choice, imported now (so unused ones cost nothing)."""
    if name not in PIPELINES:
        raise ValueError(f"unknown pipeline {name!r}; accepted: {', '.join(sorted(PIPELINES))}")
    choice = PIPELINES[name]
    try:
        return getattr(importlib.import_module(choice.module), choice.class_name)
    except (ImportError, AttributeError) as error:
        raise RuntimeError(
            f"--pipeline {name} needs {choice.class_name} from {choice.module.replace('.', '/')}.py, "
            f"which could not be imported: {error}"
        ) from error


def call_parameters(cls: type) -> set[str]:
    """Named parameters of `cls.__call__` along its class hierarchy (what a pipeline call accepts)."""
    names: set[str] = set()
    for klass in cls.__mro__:
        call = klass.__dict__.get("__call__")
        if call is None:
            continue
        call = inspect.unwrap(call)
        for parameter in inspect.signature(call).parameters.values():
            if parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD) and parameter.name != "self":
                names.add(parameter.name)
    return names


def set_scheduler(pipe: Any, name: str) -> None:
    """Replace `pipe.scheduler` by a distilled-model scheduler built from its config."""
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; accepted: {', '.join(sorted(SCHEDULERS))}")
    import diffusers

    class_name, options = SCHEDULERS[name]
    pipe.scheduler = getattr(diffusers, class_name).from_config(pipe.scheduler.config, **options)
