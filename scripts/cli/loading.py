"""Turning options into a ready pipeline and its call: dtype and device defaults, loading (ControlNet,
LoRA, scheduler, FreeU), the image size, the control image and the call arguments the options give.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from . import checks
from .assets import model_source
from .quiet import text_encoder_lora_warnings_silenced
from .registry import (
    CALL_OPTIONS,
    DTYPE_NAMES,
    LAYER_OPTIONS,
    call_parameters,
    pipeline_class,
    pladis_arguments,
    set_scheduler,
)

DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}


def default_device() -> str:
    """cuda when available, else cpu."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def lora_spec_problem(option: str, spec: str | Path) -> str | None:
    """A LoRA is an existing local file or `<owner>/<repo>/<file>` on the hub, or this says why not."""
    if Path(spec).is_file():
        return None
    spec = str(spec)
    if spec.startswith(("/", ".", "~")) or "\\" in spec or spec.count("/") != 2 or spec.endswith("/"):
        return f"{option}: no such file: {spec} (give a local .safetensors file or <owner>/<repo>/<file> on the hub)"
    return None


def lora_file(spec: str | Path) -> str:
    """A local LoRA `.safetensors` path: `spec` if it is a file, else `<owner>/<repo>/<file>` fetched from the hub."""
    if Path(spec).is_file():
        return str(spec)
    if problem := lora_spec_problem("--lora", spec):
        raise ValueError(problem)
    repo_id, _, filename = str(spec).rpartition("/")
    from huggingface_hub import hf_hub_download

    return hf_hub_download(repo_id, filename)


def fuse_lora_file(pipe: Any, spec: str | Path, scale: float = 1.0) -> None:
    """Load LoRA weights from a local `.safetensors` file (or `<owner>/<repo>/<file>`, fetched) and fuse them at
    `scale`. `use_safetensors=True` turns off diffusers' fallback to pickled weights (a pickle, whatever its
    name, is refused)."""
    path = lora_file(spec)
    if problem := checks.safetensors_problem(Path(path)):
        raise ValueError(f"--lora {spec}: {problem}")
    with text_encoder_lora_warnings_silenced():  # distilled-SDXL LoRAs hold U-Net weights only, as expected
        pipe.load_lora_weights(str(path), use_safetensors=True)
    pipe.fuse_lora(lora_scale=scale)


def load_pipeline(args: argparse.Namespace, device: str | torch.device | None = None) -> Any:
    """Load `args.pipeline` from `args.model` and apply the options that change the model (LoRA, scheduler, FreeU)."""
    cls = pipeline_class(args.pipeline)
    dtype = DTYPES[args.dtype]
    components = {}
    for option in ("model", "controlnet"):  # damaged or missing files named, not left to the loaders' messages
        value = getattr(args, option, None)
        if value and (problem := checks.component_files_problem(value, f"--{option}", source=model_source(str(value)))):
            raise ValueError(problem)
    if getattr(args, "controlnet", None) is not None:
        from diffusers import ControlNetModel

        components["controlnet"] = ControlNetModel.from_pretrained(
            model_source(str(args.controlnet)), dtype=dtype, use_safetensors=True
        )
    pipe = cls.from_pretrained(model_source(args.model), dtype=dtype, use_safetensors=True, **components)
    pipe = pipe.to(device or args.device or default_device())
    pipe.set_progress_bar_config(disable=True)  # the scripts show one bar over the whole job
    if getattr(args, "lora", None) is not None:
        fuse_lora_file(pipe, args.lora, getattr(args, "lora_scale", 1.0))
    if getattr(args, "scheduler", None) is not None:
        set_scheduler(pipe, args.scheduler)
    if getattr(args, "freeu", None) is not None:
        if not hasattr(pipe, "enable_freeu"):
            raise ValueError(f"--freeu needs a U-Net pipeline; {type(pipe).__name__} has no enable_freeu")
        pipe.enable_freeu(*args.freeu)
    return pipe


def image_size(pipe: Any, args: argparse.Namespace) -> tuple[int, int]:
    """(height, width): the options when given, else the pipeline's default resolution."""
    if args.height and args.width:
        return args.height, args.width
    sample_size = getattr(pipe, "default_sample_size", None)  # the ControlNet pipelines have none
    if sample_size is None and getattr(pipe, "unet", None) is None:
        return args.height, args.width  # no known default (e.g. video pipelines): the pipeline's own
    if sample_size is None:
        sample_size = pipe.unet.config.sample_size
    default = sample_size * pipe.vae_scale_factor
    return args.height or default, args.width or default


def control_image(args: argparse.Namespace, height: int, width: int) -> Image.Image | None:
    """`--control-image`, through `--preprocess` (canny / depth, from `preprocess.py`), at the output size."""
    if args.control_image is None:
        return None
    image = Image.open(model_source(str(args.control_image))).convert("RGB")
    if args.preprocess is not None:
        try:
            from scripts.cli.preprocess import PREPROCESSORS
        except ImportError as error:
            raise RuntimeError(f"--preprocess needs scripts/cli/preprocess.py: {error}") from error
        if args.preprocess not in PREPROCESSORS:
            raise ValueError(f"unknown --preprocess {args.preprocess!r}; accepted: {', '.join(sorted(PREPROCESSORS))}")
        options = {"model": model_source(args.depth_model)} if args.preprocess == "depth" and args.depth_model else {}
        image = PREPROCESSORS[args.preprocess](image, **options).convert("RGB")
    return image.resize((width, height), Image.BICUBIC)


def guidance_call_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """The call arguments of the `CALL_OPTIONS` given in `args` (those left at None are not passed)."""
    return {
        parameter: getattr(args, option)
        for option, parameter in CALL_OPTIONS.items()
        if getattr(args, option, None) is not None
    }


def call_options(pipe: Any, args: argparse.Namespace, height: int, width: int) -> dict[str, Any]:
    """The pipeline call arguments the options give (everything but prompt, λ and generator).

    Guidance extras (`--pag-scale`, `--seg-*`, `--controlnet-scale`) are passed only when given, and
    raise a clear error when the chosen pipeline does not take them.
    """
    accepted = call_parameters(type(pipe))
    given = {"height": height, "width": width, "guidance_scale": args.guidance_scale}
    options: dict[str, Any] = {name: value for name, value in given.items() if value is not None}
    if "pladis_alpha" in accepted:  # a PLADIS pipeline; stock ones (--pipeline auto) get these via apply_pladis
        options.update(pladis_arguments(args))
    if args.timesteps is not None:
        options["timesteps"] = list(args.timesteps)
    else:
        options["num_inference_steps"] = args.steps
    if args.negative_prompt is not None:
        options["negative_prompt"] = args.negative_prompt
    for parameter, value in guidance_call_arguments(args).items():
        if parameter not in accepted:
            option = next(option for option, name in CALL_OPTIONS.items() if name == parameter)
            raise ValueError(
                f"--{option.replace('_', '-')} is not an option of --pipeline {args.pipeline} ({type(pipe).__name__})"
            )
        options[parameter] = value
    for option in LAYER_OPTIONS:
        parameter = CALL_OPTIONS[option]
        if parameter in options:  # checked while parsing when the U-Net config was on this machine; now surely
            from pipeline.guidance import self_attention_layer_names

            names = self_attention_layer_names(pipe.unet)
            if problem := checks.layer_ids_problem(f"--{option.replace('_', '-')}", options[parameter], names):
                raise ValueError(problem)
    control = control_image(args, height, width)
    if control is not None:
        if "image" not in accepted:
            raise ValueError(f"--control-image needs --pipeline controlnet, not {args.pipeline}")
        options["image"] = control
    return options


def seeded_generator(seed: int) -> torch.Generator:
    """A CPU generator: the pipeline draws its starting noise on CPU, so a seed gives the same image on any device."""
    return torch.Generator("cpu").manual_seed(seed)


def step_progress(bar: Any) -> Callable:
    """A `callback_on_step_end` that advances a tqdm bar by one denoising step."""

    def advance(pipe: Any, step: int, timestep: Any, callback_kwargs: dict) -> dict:
        bar.update(1)
        return callback_kwargs

    return advance
