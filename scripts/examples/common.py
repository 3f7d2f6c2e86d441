"""The command line and the with/without-PLADIS grid shared by the examples in `scripts/examples/`.

Each example keeps only what is specific to it (model, LoRA, scheduler, guidance) in its own file;
this module parses the common options, switches to the embedded tiny assets with `--tiny`, and writes
the labelled grid with `scripts/grid.py`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from attention.validation import check_pladis_alpha, check_pladis_scale
from scripts.build_tiny_assets import TINY_SDXL, TINY_SDXL_LORA
from scripts import checks
from scripts.common import DTYPES, default_device, looks_like_path, model_source, seeded_generator
from scripts.grid import save_grid

SDXL_BASE = "stabilityai/stable-diffusion-xl-base-1.0"
DEFAULT_PROMPT = "a photo of an astronaut riding a horse on the moon"
OUTPUT_DIR = Path("outputs/examples")
TINY_STEPS = 2
TINY_SIZE = 64


def example_parser(description: str, *, model: str, steps: int, guidance_scale: float, pladis_scale: float = 2.0,
                   lora: str | None = None, dtype: str = "float16") -> argparse.ArgumentParser:
    """The options every example takes; `lora` (a default LoRA file) adds `--lora`, `dtype` is the GPU default."""
    parser = argparse.ArgumentParser(description=description.strip().splitlines()[0])
    parser.add_argument("--model", default=model, help=f"hub id or local folder (default {model})")
    if lora is not None:
        parser.add_argument("--lora", default=lora,
                            help=f"LoRA .safetensors: a local file or <owner>/<repo>/<file> (default {lora})")
    parser.add_argument("--tiny", action="store_true",
                        help="use the embedded tiny random-weight assets in asset/ (CPU, seconds; images are noise)")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument("--pladis-scale", type=float, default=pladis_scale, help=f"λ (default {pladis_scale:g})")
    parser.add_argument("--pladis-alpha", type=float, default=1.5, help="α in (1, 2]: 1.5 entmax15, 2 sparsemax")
    parser.add_argument("--steps", type=int, default=steps, help=f"denoising steps (default {steps}, 2 with --tiny)")
    parser.add_argument("--guidance-scale", type=float, default=guidance_scale,
                        help=f"CFG scale (default {guidance_scale:g})")
    parser.add_argument("--height", type=int, default=None, help="image height (default: the model's, 64 with --tiny)")
    parser.add_argument("--width", type=int, default=None, help="image width (default: the model's, 64 with --tiny)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda when available)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help=f"weights dtype (default: {dtype} on a GPU, float32 on CPU and with --tiny)")
    parser.add_argument("--out", type=Path, default=None, help="grid PNG (default outputs/examples/<example>.png)")
    parser.set_defaults(gpu_dtype=dtype)
    return parser


def parse_example_args(parser: argparse.ArgumentParser, argv: list[str] | None, *, name: str,
                       tiny: dict[str, Any] | None = None, flux: bool = False) -> argparse.Namespace:
    """Parse `argv`; with `--tiny`, `tiny` (option → value; the tiny SDXL and its LoRA by default) replaces
    the defaults, with 2 steps at 64×64 (options given explicitly still win). Checks every option before
    anything loads (`check_example_args`); `flux` selects FLUX's image-size rule."""
    known, _ = parser.parse_known_args(argv)
    if known.tiny:
        tiny_defaults = {"model": TINY_SDXL, "lora": TINY_SDXL_LORA, **(tiny or {})}
        valid = {action.dest for action in parser._actions}
        parser.set_defaults(steps=TINY_STEPS, height=TINY_SIZE, width=TINY_SIZE,
                            **{key: str(value) for key, value in tiny_defaults.items() if key in valid})
    args = parser.parse_args(argv)
    try:
        check_pladis_scale(args.pladis_scale)
        check_pladis_alpha(args.pladis_alpha)
    except (TypeError, ValueError) as error:
        parser.error(str(error))
    if args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    args.model = model_source(args.model)
    args.device = args.device or default_device()
    on_gpu = not args.tiny and not str(args.device).startswith("cpu")
    args.dtype = DTYPES[args.dtype or (args.gpu_dtype if on_gpu else "float32")]
    args.out = args.out or OUTPUT_DIR / f"{name}.png"
    if problem := example_args_problem(args, flux):
        parser.error(problem)
    return args


def example_args_problem(args: argparse.Namespace, flux: bool) -> str | None:
    """What is wrong with the example's options, found before any model loads, or None: the output name,
    the image size, local files that do not exist, the LoRA (safetensors only) and PAG/SEG layer ids."""
    problem = (checks.output_file_problem("--out", args.out)
               or checks.size_problem(args.height, args.width, checks.size_multiple(args.model, flux)))
    if problem:
        return problem
    for option in ("model", "controlnet", "depth_model", "image"):
        value = str(getattr(args, option, None) or "")
        if "://" not in value and looks_like_path(value) and not Path(model_source(value)).exists():
            return f"--{option.replace('_', '-')}: no such file or folder: {value}"
    if getattr(args, "lora", None) is not None:
        if problem := checks.lora_problem("--lora", args.lora) or lora_spec_problem(args.lora):
            return problem
    layer_options = [option for option in ("pag_layers", "seg_layers") if getattr(args, option, None) is not None]
    names = checks.unet_self_attention_names(args.model) if layer_options else None
    for option in layer_options:
        if problem := checks.layer_ids_problem(f"--{option.replace('_', '-')}", getattr(args, option), names):
            return problem
    return None


def lora_spec_problem(spec: str) -> str | None:
    """`--lora` is an existing local file or `<owner>/<repo>/<file>` on the hub, or this says why not."""
    if Path(spec).is_file():
        return None
    spec = str(spec)
    if spec.startswith(("/", ".", "~")) or "\\" in spec or spec.count("/") != 2 or spec.endswith("/"):
        return f"--lora: no such file: {spec} (give a local .safetensors file or <owner>/<repo>/<file> on the hub)"
    return None


def lora_file(spec: str) -> str:
    """A local LoRA `.safetensors` path: `spec` if it is a file, else `<owner>/<repo>/<file>` fetched from the hub."""
    if Path(spec).is_file():
        return str(spec)
    if problem := lora_spec_problem(spec):
        raise ValueError(problem)
    repo_id, _, filename = str(spec).rpartition("/")
    from huggingface_hub import hf_hub_download

    return hf_hub_download(repo_id, filename)


def save_with_and_without(pipe: Any, args: argparse.Namespace, method: str, **call_options: Any) -> Path:
    """Generate `args.prompt` twice from the same seed with `call_options`, at λ = 0 and λ = `--pladis-scale`,
    and write the two images side by side, labelled `method` and `method + PLADIS`. Returns the grid path."""
    options = {"height": args.height, "width": args.width, **call_options}
    if "timesteps" not in options:
        options.setdefault("num_inference_steps", args.steps)
    images = [
        pipe(args.prompt, generator=seeded_generator(args.seed), pladis_scale=scale, pladis_alpha=args.pladis_alpha,
             **options).images[0]
        for scale in (0.0, args.pladis_scale)
    ]
    labels = [method, f"{method} + PLADIS (scale {args.pladis_scale:g}, alpha {args.pladis_alpha:g})"]
    path = save_grid(images, labels, args.out)
    print(f"wrote {path}")
    return path
