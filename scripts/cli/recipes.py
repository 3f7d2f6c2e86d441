"""The examples in `scripts/examples/` as recipes over the core: each states its pipeline, model, LoRA,
scheduler, guidance and defaults; this module gives them one command line (with `--tiny` for the embedded
assets), loads the pipeline with `loading.load_pipeline` and writes the without/with-PLADIS grid.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from attention.validation import check_pladis_alpha, check_pladis_scale

from . import checks
from .assets import TINY_SDXL, TINY_SDXL_LORA, TINY_SIZE, TINY_STEPS, looks_like_path, model_source
from .captions import print_random_weights_note, run_caption, scale_label
from .entry_points import invoked_command
from .grid import save_grid
from .options import add_guidance_options, add_pladis_options, guidance_option_problem, pladis_options_problem
from .parsers import command_parser
from .registry import CALL_OPTIONS, DTYPE_NAMES, LAYER_OPTIONS, PLADIS_OPTIONS, pladis_arguments

SDXL_BASE = "stabilityai/stable-diffusion-xl-base-1.0"
DEFAULT_PROMPT = "a photo of an astronaut riding a horse on the moon"
OUTPUT_DIR = Path("outputs/examples")


def example_parser(
    description: str,
    *,
    model: str,
    steps: int,
    guidance_scale: float,
    pladis_scale: float = 2.0,
    pipeline: str = "sdxl",
    lora: str | None = None,
    scheduler: str | None = None,
    freeu: Sequence[float] | None = None,
    guidance: dict[str, Any] | None = None,
    dtype: str = "float16",
) -> argparse.ArgumentParser:
    """The options of an example of `pipeline` (a `--pipeline` name): `lora` (a default LoRA file) adds `--lora`;
    `guidance` (pipeline argument → default) adds those guidance options; `scheduler` (a `--scheduler` name) and
    `freeu` (s1, s2, b1, b2) are applied when loading; `dtype` is the GPU default."""
    parser = command_parser(description)
    parser.add_argument("--model", default=model, help=f"hub id or local folder (default {model})")
    if lora is not None:
        parser.add_argument(
            "--lora", default=lora, help=f"LoRA .safetensors: a local file or <owner>/<repo>/<file> (default {lora})"
        )
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="use the embedded tiny random-weight assets in asset/ (CPU, seconds; images are noise)",
    )
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument("--pladis-scale", type=float, default=pladis_scale, help=f"λ (default {pladis_scale:g})")
    add_pladis_options(parser)
    parser.add_argument(
        "--steps", type=int, default=steps, help=f"denoising steps (default {steps}, {TINY_STEPS} with --tiny)"
    )
    parser.add_argument(
        "--guidance-scale", type=float, default=guidance_scale, help=f"CFG scale (default {guidance_scale:g})"
    )
    parser.add_argument(
        "--height", type=int, default=None, help=f"image height (default: the model's, {TINY_SIZE} with --tiny)"
    )
    parser.add_argument(
        "--width", type=int, default=None, help=f"image width (default: the model's, {TINY_SIZE} with --tiny)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda when available)")
    parser.add_argument(
        "--dtype",
        choices=DTYPE_NAMES,
        default=None,
        help=f"weights dtype (default: {dtype} on a GPU, float32 on CPU and with --tiny)",
    )
    parser.add_argument("--out", type=Path, default=None, help="grid PNG (default outputs/examples/<example>.png)")
    if guidance:
        add_guidance_options(parser.add_argument_group("guidance"), list(guidance), **guidance)
    parser.set_defaults(
        gpu_dtype=dtype, pipeline=pipeline, scheduler=scheduler, freeu=None if freeu is None else list(freeu)
    )
    return parser


def parse_example_args(
    parser: argparse.ArgumentParser,
    argv: list[str] | None,
    *,
    name: str,
    tiny: dict[str, Any] | None = None,
    flux: bool = False,
) -> argparse.Namespace:
    """Parse `argv`; with `--tiny`, `tiny` (option → value; the tiny SDXL and its LoRA by default) replaces
    the defaults, with TINY_STEPS steps at TINY_SIZE² (options given explicitly still win). Checks every option
    before anything loads (`example_args_problem`); `flux` selects FLUX's image-size rule."""
    parser.prog = " ".join(invoked_command(f"scripts.examples.{name}"))
    known, _ = parser.parse_known_args(argv)
    if known.tiny:
        tiny_defaults = {"model": TINY_SDXL, "lora": TINY_SDXL_LORA, **(tiny or {})}
        valid = {action.dest for action in parser._actions}
        parser.set_defaults(
            steps=TINY_STEPS,
            height=TINY_SIZE,
            width=TINY_SIZE,
            **{key: str(value) for key, value in tiny_defaults.items() if key in valid},
        )
    args = parser.parse_args(argv)
    try:
        check_pladis_scale(args.pladis_scale)
        check_pladis_alpha(args.pladis_alpha)
    except (TypeError, ValueError) as error:
        parser.error(str(error))
    if args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    from .loading import default_device  # imports torch: only once the options parsed

    args.model = model_source(args.model)
    args.device = args.device or default_device()
    on_gpu = not args.tiny and not str(args.device).startswith("cpu")
    args.dtype = args.dtype or (args.gpu_dtype if on_gpu else "float32")
    args.out = args.out or OUTPUT_DIR / f"{name}.png"
    if problem := example_args_problem(args, flux) or pladis_options_problem(args, args.model):
        parser.error(problem)
    print_random_weights_note(args.model)
    return args


def example_args_problem(args: argparse.Namespace, flux: bool) -> str | None:
    """What is wrong with the example's options, found before any model loads, or None: the output name,
    the image size, local files that do not exist, the LoRA (safetensors only) and PAG/SEG layer ids."""
    problem = checks.output_file_problem("--out", args.out) or checks.size_problem(
        args.height, args.width, checks.size_multiple(args.model, flux)
    )
    if problem:
        return problem
    for option in ("model", "controlnet", "depth_model", "image"):
        value = str(getattr(args, option, None) or "")
        if "://" not in value and looks_like_path(value) and not Path(model_source(value)).exists():
            return f"--{option.replace('_', '-')}: no such file or folder: {value}"
    if getattr(args, "lora", None) is not None:
        from .loading import lora_spec_problem

        if problem := checks.lora_problem("--lora", args.lora) or lora_spec_problem("--lora", args.lora):
            return problem
    if problem := _guidance_and_model_problem(args):
        return problem
    layer_options = [option for option in LAYER_OPTIONS if getattr(args, option, None) is not None]
    names = checks.unet_self_attention_names(args.model) if layer_options else None
    for option in layer_options:
        if problem := checks.layer_ids_problem(f"--{option.replace('_', '-')}", getattr(args, option), names):
            return problem
    return example_machine_problem(args)


def example_machine_problem(args: argparse.Namespace) -> str | None:
    """What this machine lacks for an example, found before any model loads: the CUDA GPU `--device` names, and
    with HF_HUB_OFFLINE=1 its hub models and LoRA in the local cache and no URL to fetch (`--tiny` needs none)."""
    from .loading import lora_spec_problem

    hint = ", or run the example with --tiny (embedded assets)"
    problem = checks.device_problem("--device", args.device) or checks.hub_offline_problem(
        "--model", args.model, hint=hint
    )
    for option in ("controlnet", "depth_model"):
        problem = problem or checks.hub_offline_problem(
            f"--{option.replace('_', '-')}", getattr(args, option, None), "config.json", hint
        )
    lora = str(getattr(args, "lora", None) or "")
    if not problem and lora and not Path(lora).is_file() and not lora_spec_problem("--lora", lora):
        repo_id, _, filename = lora.rpartition("/")
        problem = checks.hub_file_offline_problem("--lora", repo_id, filename, hint, shown=lora)
    return problem or checks.url_offline_problem("--image", getattr(args, "image", None))


def _guidance_and_model_problem(args: argparse.Namespace) -> str | None:
    """The example's guidance values (checked as the pipeline checks them), and whether its model, control image
    and FreeU fit its pipeline (a missing component names the option to use)."""
    for option in CALL_OPTIONS:
        if problem := guidance_option_problem(option, getattr(args, option, None)):
            return problem
    given = ["controlnet"] if getattr(args, "controlnet", None) else []
    if problem := checks.components_problem(args.pipeline, args.model, given, suggest=False):
        return problem
    for option in ("model", "controlnet"):
        value = getattr(args, option, None)
        if value and (problem := checks.component_files_problem(value, f"--{option}", source=model_source(value))):
            return problem
    image = str(getattr(args, "image", None) or "")
    if (
        image
        and "://" not in image
        and (problem := checks.image_file_problem("--image", image, source=model_source(image)))
    ):
        return problem
    return None if args.freeu is None else checks.freeu_problem(args.pipeline, args.model)


def save_with_and_without(pipe: Any, args: argparse.Namespace, method: str, **call_options: Any) -> Path:
    """Generate `args.prompt` twice from the same seed, at λ = 0 and λ = `--pladis-scale`, with the options'
    guidance scale and guidance arguments plus `call_options`, and write the two images side by side, labelled
    `method` and `method + PLADIS`, over the run's caption. Returns the grid path."""
    return save_pair(images_with_and_without(pipe, args, **call_options), args, method)


def images_with_and_without(pipe: Any, args: argparse.Namespace, **call_options: Any) -> list:
    """The two images of `save_with_and_without`, without writing them (every process of a parallel run
    generates; one writes)."""
    from .loading import guidance_call_arguments, seeded_generator

    options = {
        "height": args.height,
        "width": args.width,
        "guidance_scale": args.guidance_scale,
        **guidance_call_arguments(args),
        **call_options,
    }
    if "timesteps" not in options:
        options.setdefault("num_inference_steps", args.steps)
    pladis = {name: value for name, value in pladis_arguments(args).items() if value != PLADIS_OPTIONS[name]}
    return [
        pipe(args.prompt, generator=seeded_generator(args.seed), pladis_scale=scale, **pladis, **options).images[0]
        for scale in (0.0, args.pladis_scale)
    ]


def save_pair(images: list, args: argparse.Namespace, method: str) -> Path:
    """Write the without/with-PLADIS `images` side by side to `args.out`, labelled by `method` and λ, over the
    run's caption; returns the path."""
    labels = [scale_label(method, 0.0), scale_label(method, args.pladis_scale)]
    path = save_grid(images, labels, args.out, caption=run_caption(args))
    print(f"wrote {path}")
    return path
