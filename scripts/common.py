"""Command-line pieces shared by `compare.py`, `generate.py` and `attention_maps.py`: options, loading, seeds.

One table maps `--pipeline` names to the PLADIS pipeline classes (imported only when chosen), one maps
`--scheduler` names to distilled-model schedulers, and `run_settings` records what reproduces a run.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import inspect
import json
import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # the scripts run as plain files from anywhere

from attention.validation import check_guidance_scale, check_pladis_alpha, check_pladis_scale, check_seg_blur_sigma  # noqa: E402
from attention.kernel_choice import requested_kernel  # noqa: E402
from scripts import checks  # noqa: E402

ASSET_DIR = REPO_ROOT / "asset"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
TINY_STEPS = 2  # the tiny assets are random weights: two steps show the plumbing in a second
TOY_MODEL = "asset/toy-sdxl"  # trained by scripts/train_toy.py: compare.py's and attention_maps.py's default
TOY_PROMPT = "a red circle on the left and a blue square on the right"
TOY_STEPS = 20  # as in the toy's evaluation (scripts/toy_eval.py)


@dataclass(frozen=True)
class PipelineChoice:
    """A `--pipeline` choice: where its class lives, its tiny default model and its usual settings."""

    module: str
    class_name: str
    tiny_model: str  # relative to the repository root
    steps: int
    guidance_scale: float | None  # None: the pipeline's own default


PIPELINES: dict[str, PipelineChoice] = {
    "sdxl": PipelineChoice("pipeline.pipeline_sdxl", "PLADISStableDiffusionXLPipeline", "asset/tiny-sdxl", 25, 5.0),
    "sdxl-seg": PipelineChoice(
        "pipeline.pipeline_sdxl_seg", "PLADISStableDiffusionXLSEGPipeline", "asset/tiny-sdxl", 25, 5.0
    ),
    "controlnet": PipelineChoice(
        "pipeline.pipeline_controlnet", "PLADISStableDiffusionXLControlNetPipeline", "asset/tiny-sdxl-controlnet", 25, 5.0
    ),
    "flux": PipelineChoice("pipeline.pipeline_flux_pladis", "PLADISFluxPipeline", "asset/tiny-flux-schnell", 28, 3.5),
    # Any pipeline of a supported family, as its stock class (model_index.json), with PLADIS through apply_pladis.
    "auto": PipelineChoice("diffusers", "DiffusionPipeline", "asset/tiny-sdxl", 28, None),
}

# Distilled SDXL recipes: DMD2 → LCM, SDXL-Lightning → Euler "trailing", Hyper-SDXL → DDIM "trailing".
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "lcm": ("LCMScheduler", {}),
    "euler-trailing": ("EulerDiscreteScheduler", {"timestep_spacing": "trailing"}),
    "ddim-trailing": ("DDIMScheduler", {"timestep_spacing": "trailing"}),
}

# Command-line option → pipeline call argument, forwarded only when given and accepted by the class.
GUIDANCE_OPTIONS = {
    "pag_scale": "pag_scale",
    "pag_layers": "pag_applied_layers",
    "seg_scale": "seg_scale",
    "seg_blur_sigma": "seg_blur_sigma",
    "seg_layers": "seg_applied_layers",
    "controlnet_scale": "controlnet_conditioning_scale",
    "pladis_controlnet": "pladis_controlnet",
    "pladis_single_blocks": "pladis_single_blocks",
}
TINY_CONTROL_IMAGE = "asset/tiny-control-image.png"
TINY_DEPTH_MODEL = "asset/tiny-dpt"

PACKAGES = ("torch", "diffusers", "transformers", "accelerate", "peft", "entmax", "safetensors", "numpy", "pillow")


def comma_floats(text: str) -> list[float]:
    """`"0,1,1.5"` → `[0.0, 1.0, 1.5]` (argparse type)."""
    try:
        return [float(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def comma_ints(text: str) -> list[int]:
    """`"999,749,499"` → `[999, 749, 499]` (argparse type)."""
    try:
        return [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def comma_words(text: str) -> list[str]:
    """`"mid,up_blocks.0"` → `["mid", "up_blocks.0"]` (argparse type)."""
    return [item.strip() for item in text.split(",") if item.strip()]


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """Options choosing and preparing the pipeline: class, weights, device, LoRA, scheduler, guidance extras."""
    group = parser.add_argument_group("model")
    group.add_argument("--pipeline", choices=sorted(PIPELINES), default="sdxl", help="PLADIS pipeline (default sdxl)")
    group.add_argument("--model", default=None, help="hub id or local folder (default: the pipeline's tiny asset)")
    group.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda when available)")
    group.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    group.add_argument("--lora", type=Path, default=None, help="local LoRA .safetensors, loaded and fused")
    group.add_argument("--lora-scale", type=float, default=1.0, help="LoRA strength when fusing (default 1)")
    group.add_argument("--scheduler", choices=sorted(SCHEDULERS), default=None,
                       help="distilled-model scheduler: lcm (DMD2), euler-trailing (Lightning), ddim-trailing (Hyper-SD)")
    group.add_argument("--timesteps", type=comma_ints, default=None, help="explicit timesteps, e.g. 999,749,499,249 (DMD2)")
    group.add_argument("--freeu", type=float, nargs=4, metavar=("S1", "S2", "B1", "B2"), default=None,
                       help="enable FreeU with these factors (U-Net pipelines)")
    group.add_argument("--pag-scale", type=float, default=None, help="PAG scale (--pipeline sdxl-seg)")
    group.add_argument("--pag-layers", type=comma_words, default=None, help="PAG layers, e.g. mid,down_blocks.2")
    group.add_argument("--seg-scale", type=float, default=None, help="SEG scale (--pipeline sdxl-seg)")
    group.add_argument("--seg-blur-sigma", type=float, default=None, help="SEG blur σ (> 9999 = infinite)")
    group.add_argument("--seg-layers", type=comma_words, default=None, help="SEG layers, e.g. mid")
    group.add_argument("--controlnet", default=None, help="ControlNet weights (folder or hub id) for --pipeline controlnet")
    group.add_argument("--control-image", type=Path, default=None, help="control image (--pipeline controlnet)")
    group.add_argument("--preprocess", choices=("canny", "depth"), default=None,
                       help="turn --control-image into a canny or depth map first")
    group.add_argument("--depth-model", default=None,
                       help="DPT model for --preprocess depth (default: asset/tiny-dpt for tiny models, else the preprocessor's)")
    group.add_argument("--controlnet-scale", type=float, default=None, help="controlnet_conditioning_scale")
    group.add_argument("--pladis-controlnet", action="store_true", default=None,
                       help="PLADIS on the ControlNet's cross-attention too (--pipeline controlnet)")
    group.add_argument("--pladis-single-blocks", action="store_true", default=None,
                       help="PLADIS in FLUX's single-stream blocks too (--pipeline flux)")


def add_generation_options(parser: argparse.ArgumentParser) -> None:
    """Options of one generation: PLADIS α, steps, guidance, size, seed, negative prompt."""
    group = parser.add_argument_group("generation")
    group.add_argument("--pladis-alpha", type=float, default=1.5, help="α in (1, 2]: 1.5 entmax15, 2 sparsemax")
    group.add_argument("--negative-prompt", default=None)
    group.add_argument("--steps", type=int, default=None, help="denoising steps (default: 2 tiny, else the pipeline's usual)")
    group.add_argument("--guidance-scale", type=float, default=None, help="CFG scale (default 5 for SDXL, 3.5 for FLUX)")
    group.add_argument("--height", type=int, default=None)
    group.add_argument("--width", type=int, default=None)
    group.add_argument("--seed", type=int, default=0)


def add_settings_option(parser: argparse.ArgumentParser) -> None:
    """`--settings FILE`: start from the arguments recorded in a run's JSON (explicit options still win)."""
    parser.add_argument("--settings", type=Path, default=None,
                        help="JSON written next to an earlier output: rerun with its recorded arguments")


def parse_with_settings(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse `argv`; when it names `--settings FILE`, that file's recorded arguments become the defaults."""
    known, _ = parser.parse_known_args(argv)
    if getattr(known, "settings", None) is not None:
        try:
            settings = read_settings(known.settings)
        except ValueError as error:
            parser.error(f"--settings: {error}")
        recorded = recorded_arguments(parser, known.settings, settings)
        parser.set_defaults(**recorded)
        threads = settings.get("torch_threads")
        if threads is not None and threads != torch.get_num_threads():
            print(f"note: {known.settings} was made with {threads} torch threads, this run has "
                  f"{torch.get_num_threads()}; CPU results can differ in the last bits", file=sys.stderr)
    return parser.parse_args(argv)


def recorded_arguments(parser: argparse.ArgumentParser, path: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """The options a settings file records that `parser` knows, each checked like the command line would:
    a value outside an option's choices or of the wrong kind is a usage error naming the file."""
    actions = {action.dest: action for action in parser._actions if action.dest != "settings"}
    recorded = {name: value for name, value in settings["arguments"].items() if name in actions}
    for name, value in recorded.items():
        action = actions[name]
        if value is None:
            continue
        several = action.nargs is not None and action.nargs != "?"  # e.g. --freeu's four numbers: a list
        if several and not isinstance(value, list):
            parser.error(f"--settings {path}: '{name}' is {value!r}; expected a list")
        for item in value if several else [value]:
            if problem := _recorded_value_problem(action, item):
                parser.error(f"--settings {path}: '{name}' is {value!r}; expected {problem}")
    return recorded


def _recorded_value_problem(action: argparse.Action, value: Any) -> str | None:
    """What a recorded value of `action` should have been, when it is not (choices, integer, number, path)."""
    if action.choices is not None and value not in action.choices:
        return f"one of {', '.join(map(str, action.choices))}"
    if action.type is int and (isinstance(value, bool) or not isinstance(value, int)):
        return "an integer"
    if action.type is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
        return "a number"
    if action.type is Path and not isinstance(value, str):
        return "a path (a string)"
    return None


def parse_scales(text_or_values: str | list[float]) -> list[float]:
    """λ values from `"0,1,1.5,2"` (or a list), each checked like `pladis_scale`."""
    try:
        values = comma_floats(text_or_values) if isinstance(text_or_values, str) else list(text_or_values)
    except argparse.ArgumentTypeError as error:
        raise ValueError(f"--scales: {error}") from None
    if not values:
        raise ValueError("--scales needs at least one value, e.g. 0,2")
    return [check_pladis_scale(value) for value in values]


def model_source(model: str) -> str:
    """A local path made absolute (relative to the working folder, else to the repository), else unchanged (a hub id)."""
    for candidate in (Path(model), REPO_ROOT / model):
        if candidate.exists():
            return str(candidate.resolve())
    return model


def looks_like_path(value: str) -> bool:
    """Hub ids are `name` or `owner/name`; anything absolute, relative-dotted or deeper is a path."""
    return value.startswith(("/", ".", "~")) or value.count("/") > 1 or "\\" in value


def _check_model_source(parser: argparse.ArgumentParser, value: str, option: str = "--model") -> None:
    """A value that is clearly a local path must exist (hub ids are left to the hub client)."""
    if looks_like_path(value) and not Path(model_source(value)).expanduser().exists():
        parser.error(f"{option}: no such local folder: {value} (give an existing folder or a hub id like owner/name)")


FLUX_DISTILLED_STEPS = 4  # FLUX.1-schnell and other timestep-distilled FLUX models


def _timestep_distilled(model: str) -> bool:
    """A FLUX model without guidance embedding (schnell-like), from its config; only where the config
    is not on this machine yet does the name decide ("schnell" in it)."""
    distilled = checks.flux_is_timestep_distilled(model)
    return "schnell" in model.lower() if distilled is None else distilled


def is_tiny_asset(model: str) -> bool:
    """True for the random-weight pipelines in `asset/` (they get few steps and 64×64 by default); the
    trained toy is not one: it gets its pipeline's usual steps and its own 32×32 resolution."""
    source = Path(model_source(model))
    if not source.exists() or source.resolve() == (REPO_ROOT / TOY_MODEL).resolve():
        return False
    return ASSET_DIR.resolve() in source.resolve().parents


def prefer_toy(args: argparse.Namespace, fallback_prompt: str) -> bool:
    """No `--model` with `--pipeline sdxl`: use the trained toy; no `--prompt`: a toy caption on the toy, else
    `fallback_prompt`; no `--steps` on the toy: TOY_STEPS. Returns whether the toy is the model (in place,
    before `finish_common_options`)."""
    if args.model is None and args.pipeline == "sdxl" and (REPO_ROOT / TOY_MODEL / "model_index.json").exists():
        args.model = TOY_MODEL
    toy = args.model is not None and Path(model_source(args.model)).resolve() == (REPO_ROOT / TOY_MODEL).resolve()
    if args.prompt is None:
        args.prompt = TOY_PROMPT if toy else fallback_prompt
    if toy and args.steps is None and args.timesteps is None:
        args.steps = TOY_STEPS
    return toy


def finish_common_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """Check the shared options and fill the defaults that depend on the pipeline and model (in place)."""
    choice = PIPELINES[args.pipeline]
    try:
        check_pladis_alpha(args.pladis_alpha)
        requested_kernel()  # a bad PLADIS_KERNEL fails here, not after the model loaded
    except (TypeError, ValueError) as error:
        parser.error(str(error))
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    if args.timesteps is not None and args.steps is not None and args.steps != len(args.timesteps):
        parser.error(f"--steps {args.steps} disagrees with {len(args.timesteps)} --timesteps; give one of them")
    args.model = args.model or choice.tiny_model
    _check_model_source(parser, args.model)
    for option in ("lora", "control_image"):
        value = getattr(args, option)
        if value is not None and not Path(model_source(str(value))).exists():
            parser.error(f"--{option.replace('_', '-')}: no such file: {value}")
    if args.lora is not None and (problem := checks.lora_problem("--lora", args.lora)):
        parser.error(problem)
    _check_guidance_options(parser, args)
    source = model_source(args.model)
    if problem := checks.size_problem(args.height, args.width, checks.size_multiple(source, args.pipeline == "flux")):
        parser.error(problem)
    if args.depth_model is not None:
        _check_model_source(parser, str(args.depth_model), option="--depth-model")
    tiny = is_tiny_asset(args.model)
    if args.pipeline == "controlnet" and args.control_image is None and tiny:
        args.control_image = Path(TINY_CONTROL_IMAGE)  # the tiny ControlNet's example picture
    if args.preprocess is not None and args.control_image is None:
        parser.error("--preprocess needs --control-image")
    if args.pipeline == "controlnet" and args.control_image is None:
        parser.error("--pipeline controlnet needs --control-image (optionally with --preprocess canny|depth)")
    if args.preprocess == "depth" and args.depth_model is None and tiny:
        args.depth_model = TINY_DEPTH_MODEL
    if args.steps is None:
        if args.timesteps is not None:
            args.steps = len(args.timesteps)
        elif tiny:
            args.steps = TINY_STEPS
        else:
            args.steps = FLUX_DISTILLED_STEPS if args.pipeline == "flux" and _timestep_distilled(args.model) else choice.steps
    if args.guidance_scale is None:
        args.guidance_scale = choice.guidance_scale
    if tiny:
        args.height = args.height or 64
        args.width = args.width or 64
    return args


def _check_guidance_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The guidance extras: only those the chosen pipeline takes, valid values, PAG or SEG (not both), and
    layer ids that name self-attention layers of the model (from its U-Net config, before any weights load)."""
    accepted = call_parameters(pipeline_class(args.pipeline))
    given = {option: getattr(args, option) for option in GUIDANCE_OPTIONS if getattr(args, option) is not None}
    if args.controlnet is not None:
        given["controlnet"] = args.controlnet
    if args.control_image is not None:
        given["control_image"] = args.control_image
    wanted = {**GUIDANCE_OPTIONS, "controlnet": "controlnet", "control_image": "image"}
    for option in given:
        if wanted[option] not in accepted:
            takers = sorted(name for name in PIPELINES if wanted[option] in call_parameters(pipeline_class(name)))
            parser.error(f"--{option.replace('_', '-')} is not an option of --pipeline {args.pipeline}; "
                         f"it needs --pipeline {' or '.join(takers)}")
    try:
        for option in ("pag_scale", "seg_scale"):
            if option in given:
                check_guidance_scale(f"--{option.replace('_', '-')}", given[option])
        if "seg_blur_sigma" in given:
            check_seg_blur_sigma(given["seg_blur_sigma"])
    except (TypeError, ValueError) as error:
        parser.error(str(error))
    if (args.pag_scale or 0) > 0 and (args.seg_scale or 0) > 0:
        parser.error(f"--pag-scale {args.pag_scale:g} and --seg-scale {args.seg_scale:g}: PAG and SEG perturb the "
                     "same extra batch chunk, so give one of them")
    if args.pag_layers is not None or args.seg_layers is not None:
        names = checks.unet_self_attention_names(model_source(args.model))
        for option in ("pag_layers", "seg_layers"):
            if problem := checks.layer_ids_problem(f"--{option.replace('_', '-')}", getattr(args, option), names):
                parser.error(problem)


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


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_pipeline(args: argparse.Namespace, device: str | torch.device | None = None) -> Any:
    """Load `args.pipeline` from `args.model` and apply the options that change the model (LoRA, scheduler, FreeU)."""
    cls = pipeline_class(args.pipeline)
    dtype = DTYPES[args.dtype]
    components = {}
    if args.controlnet is not None:
        from diffusers import ControlNetModel

        components["controlnet"] = ControlNetModel.from_pretrained(model_source(args.controlnet), dtype=dtype, use_safetensors=True)
    pipe = cls.from_pretrained(model_source(args.model), dtype=dtype, use_safetensors=True, **components)
    pipe = pipe.to(device or args.device or default_device())
    pipe.set_progress_bar_config(disable=True)  # the scripts show one bar over the whole job
    if args.lora is not None:
        fuse_lora_file(pipe, args.lora, args.lora_scale)
    if args.scheduler is not None:
        set_scheduler(pipe, args.scheduler)
    if args.freeu is not None:
        if not hasattr(pipe, "enable_freeu"):
            raise ValueError(f"--freeu needs a U-Net pipeline; {type(pipe).__name__} has no enable_freeu")
        pipe.enable_freeu(*args.freeu)
    return pipe


def fuse_lora_file(pipe: Any, path: str | Path, scale: float = 1.0) -> None:
    """Load LoRA weights from a local `.safetensors` file and fuse them at `scale`. `use_safetensors=True`
    turns off diffusers' fallback to pickled weights (a pickle, whatever its name, is refused)."""
    pipe.load_lora_weights(str(path), use_safetensors=True)
    pipe.fuse_lora(lora_scale=scale)


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
    """`--control-image`, through `--preprocess` (canny / depth, from `scripts/preprocess.py`), at the output size."""
    if args.control_image is None:
        return None
    image = Image.open(model_source(str(args.control_image))).convert("RGB")
    if args.preprocess is not None:
        try:
            from scripts.preprocess import PREPROCESSORS
        except ImportError as error:
            raise RuntimeError(f"--preprocess needs scripts/preprocess.py: {error}") from error
        if args.preprocess not in PREPROCESSORS:
            raise ValueError(f"unknown --preprocess {args.preprocess!r}; accepted: {', '.join(sorted(PREPROCESSORS))}")
        options = {"model": model_source(args.depth_model)} if args.preprocess == "depth" and args.depth_model else {}
        image = PREPROCESSORS[args.preprocess](image, **options).convert("RGB")
    return image.resize((width, height), Image.BICUBIC)


def call_options(pipe: Any, args: argparse.Namespace, height: int, width: int) -> dict[str, Any]:
    """The pipeline call arguments the options give (everything but prompt, λ and generator).

    Guidance extras (`--pag-scale`, `--seg-*`, `--controlnet-scale`) are passed only when given, and
    raise a clear error when the chosen pipeline does not take them.
    """
    accepted = call_parameters(type(pipe))
    given = {"height": height, "width": width, "guidance_scale": args.guidance_scale}
    options: dict[str, Any] = {name: value for name, value in given.items() if value is not None}
    if "pladis_alpha" in accepted:  # a PLADIS pipeline; stock ones (--pipeline auto) get it via apply_pladis
        options["pladis_alpha"] = args.pladis_alpha
    if args.timesteps is not None:
        options["timesteps"] = list(args.timesteps)
    else:
        options["num_inference_steps"] = args.steps
    if args.negative_prompt is not None:
        options["negative_prompt"] = args.negative_prompt
    for option, parameter in GUIDANCE_OPTIONS.items():
        value = getattr(args, option)
        if value is None:
            continue
        if parameter not in accepted:
            raise ValueError(
                f"--{option.replace('_', '-')} is not an option of --pipeline {args.pipeline} ({type(pipe).__name__})"
            )
        options[parameter] = value
    for option, parameter in (("pag_layers", "pag_applied_layers"), ("seg_layers", "seg_applied_layers")):
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


def package_versions() -> dict[str, str]:
    """Versions of Python and of the packages that decide the pixels."""
    versions = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def repository_commit() -> str | None:
    """The checked-out commit of this repository, or None outside a git checkout."""
    try:
        result = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return (result.stdout.strip() or None) if result.returncode == 0 else None


def _json_value(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_json_value(item) for item in value]
    return value


def recorded_path(path: str) -> str:
    """A path inside this repository as it is relative to the repository root (the same on every checkout);
    other paths and hub ids unchanged."""
    candidate = Path(path)
    if candidate.is_absolute() and REPO_ROOT.resolve() in candidate.resolve().parents:
        return candidate.resolve().relative_to(REPO_ROOT.resolve()).as_posix()
    return path


def run_settings(script: str, args: argparse.Namespace, argv: list[str] | None, **extra: Any) -> dict[str, Any]:
    """Everything that reproduces a run: the resolved arguments, the seed, package versions, commit, device.

    `argv` is the command line as given (None: `sys.argv[1:]`); `arguments` holds every option after
    defaults were resolved, which is what `--settings` reads back.
    """
    arguments = {name: _json_value(value) for name, value in sorted(vars(args).items()) if name != "settings"}
    settings = {
        "script": script,
        "command": [f"scripts/{script}", *(sys.argv[1:] if argv is None else argv)],
        "arguments": arguments,
        "seed": getattr(args, "seed", None),
        "model_source": recorded_path(model_source(args.model)) if getattr(args, "model", None) else None,
        "versions": package_versions(),
        "repository_commit": repository_commit(),
        "device": str(getattr(args, "device", None) or default_device()),
        "torch_threads": torch.get_num_threads(),  # CPU sums depend on it: bit-identical reruns need the same
        "rerun": f"python scripts/{script} --settings <this file>",
    }
    settings.update(extra)
    return settings


def write_settings(path: Path, settings: dict[str, Any]) -> Path:
    """Write `settings` as indented JSON (folders created; through a temporary file, so a reader never
    sees half of it) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(json.dumps(settings, indent=2) + "\n")
    os.replace(partial, path)
    return path


def read_text_file(path: Path) -> str:
    """The UTF-8 text of `path`, or a ValueError naming the file and the problem (missing, unreadable,
    not UTF-8 with the line of the first bad byte)."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise ValueError(f"{path}: cannot be read ({error.strerror or error})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        raise ValueError(f"{path}, line {line}: not UTF-8 text (byte {data[error.start]:#04x}); "
                         "save the file as UTF-8") from None


def read_settings(path: Path) -> dict[str, Any]:
    """A settings JSON written by `write_settings`, with a clear error (file, line, problem) when it is not one."""
    try:
        settings = json.loads(read_text_file(path))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}, line {error.lineno} column {error.colno}: not valid JSON ({error.msg})") from None
    if not isinstance(settings, dict) or not isinstance(settings.get("arguments"), dict):
        raise ValueError(f"{path} is not a settings file written by the PLADIS scripts (no 'arguments')")
    return settings


@dataclass(frozen=True)
class PromptEntry:
    """One line of a prompt file: its index (the line's place among the prompts), text and optional seed."""

    index: int
    prompt: str
    seed: int | None = None
    negative_prompt: str | None = None


def read_prompts(path: Path) -> list[PromptEntry]:
    """Prompts from a text file (one a line) or JSON lines (`{"prompt": ..., "seed": ..., "negative_prompt": ...}`).

    The file is JSON lines when any line is a JSON object or the first line starts with `{` (so a broken
    first line is an error, not a prompt); errors name the file and line. Blank lines are skipped and do not
    count towards the indices, which name the output files.
    """
    numbered = [(number, line.strip()) for number, line in enumerate(read_text_file(path).splitlines(), start=1)]
    numbered = [(number, line) for number, line in numbered if line]
    if not numbered:
        raise ValueError(f"{path} has no prompts")
    if not (numbered[0][1].startswith("{") or any(_is_json_object(line) for _, line in numbered)):
        return [PromptEntry(index, line) for index, (_, line) in enumerate(numbered)]
    entries = []
    for index, (number, line) in enumerate(numbered):
        where = f"{path}, line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{where}: not valid JSON ({error.msg} at column {error.colno}); every line of a "
                             'JSON-lines prompt file is an object like {"prompt": "...", "seed": 0}') from None
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
            raise ValueError(f"{where}: needs a string 'prompt' field, got {line[:80]!r}")
        seed = record.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"{where}: non-integer seed {seed!r}")
        negative = record.get("negative_prompt")
        if negative is not None and not isinstance(negative, str):
            raise ValueError(f"{where}: 'negative_prompt' must be a string, got {negative!r}")
        entries.append(PromptEntry(index, record["prompt"], seed, negative))
    return entries


def _is_json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except json.JSONDecodeError:
        return False
