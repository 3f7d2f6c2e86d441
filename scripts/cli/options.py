"""The scripts' shared command line: option groups, comma-list types, `--settings FILE`, and the checks and
pipeline-dependent defaults that run while parsing, so a bad option is a usage error before any model loads.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from attention.validation import check_pladis_alpha, check_pladis_scale, check_pladis_window
from pipeline.guidance import GUIDANCE_ARGUMENTS, GUIDANCE_BY_NAME, GuidanceArgument

from . import checks
from .assets import (
    TINY_CONTROL_IMAGE,
    TINY_DPT,
    TINY_SIZE,
    TINY_STEPS,
    TOY_MODEL,
    TOY_PROMPT,
    TOY_STEPS,
    is_tiny_asset,
    is_toy_model,
    looks_like_path,
    model_source,
    repository_relative,
)
from .captions import print_random_weights_note
from .records import read_settings
from .registry import (
    CALL_OPTIONS,
    DTYPE_NAMES,
    FLUX_DISTILLED_STEPS,
    LAYER_OPTIONS,
    PIPELINES,
    PLADIS_OPTIONS,
    SCHEDULERS,
    call_parameters,
    pipeline_class,
)

PLADIS_ALPHA = GUIDANCE_BY_NAME["pladis_alpha"]


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


class _Words(argparse.Action):
    """Words given comma-separated, space-separated or both (`mid,down_blocks.2` or `mid down_blocks.2`), as one
    list."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, [word for value in values for word in value])


def add_guidance_options(group: Any, names: Sequence[str] | None = None, **defaults: Any) -> None:
    """The command-line options of the pipelines' guidance arguments (`pipeline/guidance.py`): flag, type and
    help from its table. `names` picks some (default: every one the scripts offer); `defaults` (by argument
    name) replace None, which means "not given, not passed to the pipeline"."""
    chosen = [
        argument
        for argument in GUIDANCE_ARGUMENTS
        if argument.option is not None and (names is None or argument.name in names)
    ]
    for argument in chosen:
        default = defaults.get(argument.name)
        help_text = argument.help if default is None else f"{argument.help} Default {_shown(default)}."
        flag = f"--{argument.option.replace('_', '-')}"
        if argument.kind is bool:
            group.add_argument(flag, dest=argument.option, action="store_true", default=default, help=help_text)
        elif argument.kind is list:
            group.add_argument(
                flag,
                dest=argument.option,
                type=comma_words,
                nargs="+",
                action=_Words,
                default=default,
                metavar="LAYER",
                help=help_text,
            )
        else:
            group.add_argument(flag, dest=argument.option, type=argument.kind, default=default, help=help_text)


def _shown(value: Any) -> str:
    return (
        ",".join(value)
        if isinstance(value, (list, tuple))
        else f"{value:g}"
        if isinstance(value, float)
        else str(value)
    )


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """Options choosing and preparing the pipeline: class, weights, device, LoRA, scheduler, guidance extras."""
    group = parser.add_argument_group("model")
    group.add_argument("--pipeline", choices=sorted(PIPELINES), default="sdxl", help="PLADIS pipeline (default sdxl)")
    group.add_argument(
        "--model",
        default=None,
        help="hub id or local folder (default: the trained toy asset/toy-sdxl for sdxl, sdxl-seg and auto; "
        "a random-weight tiny asset for flux and controlnet)",
    )
    group.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda when available)")
    group.add_argument("--dtype", choices=DTYPE_NAMES, default="float32")
    group.add_argument("--lora", type=Path, default=None, help="local LoRA .safetensors, loaded and fused")
    group.add_argument("--lora-scale", type=float, default=1.0, help="LoRA strength when fusing (default 1)")
    group.add_argument(
        "--scheduler",
        choices=sorted(SCHEDULERS),
        default=None,
        help="distilled-model scheduler: lcm (DMD2), euler-trailing (Lightning), ddim-trailing (Hyper-SD)",
    )
    group.add_argument(
        "--timesteps", type=comma_ints, default=None, help="explicit timesteps, e.g. 999,749,499,249 (DMD2)"
    )
    group.add_argument(
        "--freeu",
        type=float,
        nargs=4,
        metavar=("S1", "S2", "B1", "B2"),
        default=None,
        help="enable FreeU with these factors (U-Net pipelines)",
    )
    add_guidance_options(group)
    group.add_argument(
        "--controlnet", default=None, help="ControlNet weights (folder or hub id) for --pipeline controlnet"
    )
    group.add_argument("--control-image", type=Path, default=None, help="control image (--pipeline controlnet)")
    group.add_argument(
        "--preprocess",
        choices=("canny", "depth"),
        default=None,
        help="turn --control-image into a canny or depth map first",
    )
    group.add_argument(
        "--depth-model",
        default=None,
        help="DPT model for --preprocess depth (default: asset/tiny-dpt for tiny models, else the preprocessor's)",
    )
    group.add_argument("--controlnet-scale", type=float, default=None, help="controlnet_conditioning_scale")


def add_pladis_options(group: Any) -> None:
    """`--pladis-alpha`, and `--pladis-start`, `--pladis-stop`, `--pladis-layers`: when and where PLADIS acts (the
    pipelines' and `apply_pladis`'s arguments of the same names; defaults those of `PLADISSettings`)."""
    alpha = PLADIS_OPTIONS["pladis_alpha"]
    group.add_argument("--pladis-alpha", type=float, default=alpha, help=f"{PLADIS_ALPHA.help} Default {alpha:g}.")
    group.add_argument(
        "--pladis-start",
        type=float,
        default=0.0,
        help="PLADIS acts on step i of N iff int(start·N) <= i < int(stop·N): start, a fraction of the steps "
        "(default 0)",
    )
    group.add_argument("--pladis-stop", type=float, default=1.0, help="stop, a fraction of the steps (default 1)")
    group.add_argument(
        "--pladis-layers",
        type=comma_words,
        nargs="+",
        action=_Words,
        default=None,
        metavar="LAYER",
        help="text-attention layer ids, regexes as pag_applied_layers: mid, down_blocks.2, up_blocks.0.attentions.1, "
        "transformer_blocks.3, single_transformer_blocks (default: the model's usual layers)",
    )


def pladis_options_problem(args: argparse.Namespace, model: str | None) -> str | None:
    """What is wrong with `--pladis-start/--pladis-stop/--pladis-layers`, or None: the window's bounds, and layer
    ids that name no text-attention layer of `model` (from its config, before any weights load)."""
    try:
        check_pladis_window(args.pladis_start, args.pladis_stop, ("--pladis-start", "--pladis-stop"))
    except (TypeError, ValueError) as error:
        return str(error)
    if args.pladis_layers is None or model is None:
        return None
    return checks.pladis_layers_problem("--pladis-layers", args.pladis_layers, checks.text_attention_names(model))


def add_generation_options(parser: argparse.ArgumentParser) -> None:
    """Options of one generation: PLADIS α, window and layers, steps, guidance, size, seed, negative prompt."""
    group = parser.add_argument_group("generation")
    add_pladis_options(group)
    group.add_argument("--negative-prompt", default=None)
    group.add_argument(
        "--steps",
        type=int,
        default=None,
        help="denoising steps (default: 20 on the toy, 2 tiny, else the pipeline's usual)",
    )
    group.add_argument(
        "--guidance-scale", type=float, default=None, help="CFG scale (default 5 for SDXL, 3.5 for FLUX)"
    )
    group.add_argument("--height", type=int, default=None)
    group.add_argument("--width", type=int, default=None)
    group.add_argument("--seed", type=int, default=0)


def add_settings_option(parser: argparse.ArgumentParser) -> None:
    """`--settings FILE`: start from the arguments recorded in a run's JSON (explicit options still win)."""
    parser.add_argument(
        "--settings",
        type=Path,
        default=None,
        help="JSON written next to an earlier output: rerun with its recorded arguments",
    )


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
        import torch

        threads = settings.get("torch_threads")
        if threads is not None and threads != torch.get_num_threads():
            print(
                f"note: {known.settings} was made with {threads} torch threads, this run has "
                f"{torch.get_num_threads()}; CPU results can differ in the last bits",
                file=sys.stderr,
            )
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


class RaisingParser(argparse.ArgumentParser):
    """A parser whose usage errors raise `ValueError(message)` instead of printing usage and exiting: the checks
    written for the command line (`finish_common_options`, a script's own) serve callers without one, such as
    the web demo, with the same messages."""

    def error(self, message: str) -> NoReturn:
        raise ValueError(message)


def command_line(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """The options that give `args` back when `parser` reads them: every option whose value differs from its
    default (flags bare, one-word lists comma-separated, several-word options word by word); `--settings` and
    values `args` lacks are left out."""
    argv: list[str] = []
    for action in parser._actions:
        if not action.option_strings or action.dest in ("help", "settings") or not hasattr(args, action.dest):
            continue
        value = getattr(args, action.dest)
        if value is None or value == action.default:
            continue
        flag = max(action.option_strings, key=len)
        if isinstance(action, argparse._StoreTrueAction):
            argv.append(flag)
        elif isinstance(value, (list, tuple)) and action.nargs in (None, "?"):
            argv.append(f"{flag}={','.join(map(str, value))}")
        elif isinstance(value, (list, tuple)):
            argv += [flag, *map(str, value)]
        else:
            argv.append(f"{flag}={value}")  # `--flag=value`: a value starting with "-" stays a value
    return argv


def parse_scales(text_or_values: str | list[float]) -> list[float]:
    """λ values from `"0,1,1.5,2"` (or a list), each checked like `pladis_scale`."""
    try:
        values = comma_floats(text_or_values) if isinstance(text_or_values, str) else list(text_or_values)
    except argparse.ArgumentTypeError as error:
        raise ValueError(f"--scales: {error}") from None
    if not values:
        raise ValueError("--scales needs at least one value, e.g. 0,2")
    return [check_pladis_scale(value) for value in values]


def _check_model_source(parser: argparse.ArgumentParser, value: str, option: str = "--model") -> None:
    """A value that is clearly a local path must exist (hub ids are left to the hub client)."""
    if looks_like_path(value) and not Path(model_source(value)).expanduser().exists():
        parser.error(f"{option}: no such local folder: {value} (give an existing folder or a hub id like owner/name)")


def machine_problem(args: argparse.Namespace) -> str | None:
    """What this machine lacks for the options, found before any model loads: the CUDA GPU `--device` names,
    a hub model in the local cache when HF_HUB_OFFLINE=1, controlnet_aux for `--preprocess canny`."""
    canny = args.preprocess == "canny"
    return (
        checks.device_problem("--device", args.device)
        or checks.hub_offline_problem("--model", args.model)
        or checks.hub_offline_problem("--controlnet", args.controlnet, "config.json")
        or checks.hub_offline_problem("--depth-model", args.depth_model, "config.json")
        or (checks.package_problem("--preprocess canny", "controlnet_aux", "controlnet") if canny else None)
    )


def _timestep_distilled(model: str) -> bool:
    """A FLUX model without guidance embedding (schnell-like), from its config; only where the config
    is not on this machine yet does the name decide ("schnell" in it)."""
    distilled = checks.flux_is_timestep_distilled(model)
    return "schnell" in model.lower() if distilled is None else distilled


TOY_PIPELINES = ("sdxl", "sdxl-seg", "auto")  # the trained toy is an SDXL pipeline: these load it


def prefer_toy(args: argparse.Namespace, fallback_prompt: str | None = None) -> bool:
    """No `--model` with a pipeline the trained toy fits (`TOY_PIPELINES`): use the toy; no `--prompt` (when
    the script has one: `fallback_prompt` given): a toy caption on the toy, else `fallback_prompt`; no
    `--steps` on the toy: TOY_STEPS. Returns whether the toy is the model (in place, before
    `finish_common_options`)."""
    if args.model is None and args.pipeline in TOY_PIPELINES and (TOY_MODEL / "model_index.json").exists():
        args.model = repository_relative(TOY_MODEL)
    toy = args.model is not None and is_toy_model(args.model)
    if fallback_prompt is not None and args.prompt is None:
        args.prompt = TOY_PROMPT if toy else fallback_prompt
    if toy and args.steps is None and args.timesteps is None:
        args.steps = TOY_STEPS
    return toy


def finish_common_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """Check the shared options and fill the defaults that depend on the pipeline and model (in place)."""
    from attention.kernels.table import requested_kernel

    choice = PIPELINES[args.pipeline]
    try:
        check_pladis_alpha(args.pladis_alpha)
        requested_kernel()  # a bad PLADIS_KERNEL fails here, not after the model loaded
    except (TypeError, ValueError) as error:
        parser.error(str(error))
    if getattr(args, "seed", None) is not None and (problem := checks.seed_problem(args.seed)):
        parser.error(f"--seed: {problem}")
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    if args.timesteps is not None and args.steps is not None and args.steps != len(args.timesteps):
        parser.error(f"--steps {args.steps} disagrees with {len(args.timesteps)} --timesteps; give one of them")
    args.model = args.model or choice.tiny_model
    _check_model_source(parser, args.model)
    if problem := machine_problem(args):
        parser.error(problem)
    for option in ("lora", "control_image"):
        value = getattr(args, option)
        if value is not None and not Path(model_source(str(value))).exists():
            parser.error(f"--{option.replace('_', '-')}: no such file: {value}")
    if args.lora is not None and (problem := checks.lora_problem("--lora", args.lora)):
        parser.error(problem)
    _check_guidance_options(parser, args)
    source = model_source(args.model)
    if problem := pladis_options_problem(args, source):
        parser.error(problem)
    if problem := checks.size_problem(args.height, args.width, checks.size_multiple(source, args.pipeline == "flux")):
        parser.error(problem)
    if args.depth_model is not None:
        _check_model_source(parser, str(args.depth_model), option="--depth-model")
    tiny = is_tiny_asset(args.model)
    print_random_weights_note(args.model)
    if args.pipeline == "controlnet" and args.control_image is None and tiny:
        args.control_image = Path(repository_relative(TINY_CONTROL_IMAGE))  # the tiny ControlNet's example picture
    if args.preprocess is not None and args.control_image is None:
        parser.error("--preprocess needs --control-image")
    if args.pipeline == "controlnet" and args.control_image is None:
        parser.error("--pipeline controlnet needs --control-image (optionally with --preprocess canny|depth)")
    if problem := _model_fit_problem(args):
        parser.error(problem)
    if args.preprocess == "depth" and args.depth_model is None and tiny:
        args.depth_model = repository_relative(TINY_DPT)
    if args.steps is None:
        if args.timesteps is not None:
            args.steps = len(args.timesteps)
        elif tiny:
            args.steps = TINY_STEPS
        else:
            args.steps = (
                FLUX_DISTILLED_STEPS if args.pipeline == "flux" and _timestep_distilled(args.model) else choice.steps
            )
    if args.guidance_scale is None:
        args.guidance_scale = choice.guidance_scale
    if tiny:
        args.height = args.height or TINY_SIZE
        args.width = args.width or TINY_SIZE
    return args


def _model_fit_problem(args: argparse.Namespace) -> str | None:
    """Whether the model, the control image and `--freeu` fit the chosen pipeline, found before any weights load:
    a component the pipeline needs and the model lacks, a damaged or missing component file or folder, a control
    image PIL cannot open, FreeU on a transformer."""
    source = model_source(args.model)
    given = ["controlnet"] if args.controlnet is not None else []
    if problem := checks.components_problem(args.pipeline, args.model, given, source=source):
        return problem
    if problem := checks.component_files_problem(args.model, source=source):
        return problem
    if args.controlnet is not None and (
        problem := checks.component_files_problem(
            args.controlnet, "--controlnet", source=model_source(str(args.controlnet))
        )
    ):
        return problem
    if args.control_image is not None and (
        problem := checks.image_file_problem(
            "--control-image", args.control_image, source=model_source(str(args.control_image))
        )
    ):
        return problem
    if args.freeu is not None:
        return checks.freeu_problem(args.pipeline, source)
    return None


def _flag(option: str) -> str:
    return f"--{option.replace('_', '-')}"


def guidance_option_problem(option: str, value: Any) -> str | None:
    """Why a guidance option's value is refused, by the check its pipeline argument has, or None."""
    argument: GuidanceArgument | None = GUIDANCE_BY_NAME.get(CALL_OPTIONS[option])
    if argument is None or argument.check is None or value is None:
        return None
    try:
        argument.check(_flag(option), value)
    except (TypeError, ValueError) as error:
        return str(error)
    return None


def _check_guidance_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The guidance extras: only those the chosen pipeline takes, valid values, PAG or SEG (not both), and
    layer ids that name self-attention layers of the model (from its U-Net config, before any weights load)."""
    accepted = call_parameters(pipeline_class(args.pipeline))
    given = {option: getattr(args, option) for option in CALL_OPTIONS if getattr(args, option) is not None}
    if args.controlnet is not None:
        given["controlnet"] = args.controlnet
    if args.control_image is not None:
        given["control_image"] = args.control_image
    wanted = {**CALL_OPTIONS, "controlnet": "controlnet", "control_image": "image"}
    for option in given:
        if wanted[option] not in accepted:
            takers = sorted(name for name in PIPELINES if wanted[option] in call_parameters(pipeline_class(name)))
            parser.error(
                f"{_flag(option)} is not an option of --pipeline {args.pipeline}; "
                f"it needs --pipeline {' or '.join(takers)}"
            )
    for option in CALL_OPTIONS:
        if option in given and (problem := guidance_option_problem(option, given[option])):
            parser.error(problem)
    if (args.pag_scale or 0) > 0 and (args.seg_scale or 0) > 0:
        parser.error(
            f"--pag-scale {args.pag_scale:g} and --seg-scale {args.seg_scale:g}: PAG and SEG perturb the "
            "same extra batch chunk, so give one of them"
        )
    if any(getattr(args, option) is not None for option in LAYER_OPTIONS):
        names = checks.unet_self_attention_names(model_source(args.model))
        for option in LAYER_OPTIONS:
            if problem := checks.layer_ids_problem(_flag(option), getattr(args, option), names):
                parser.error(problem)
