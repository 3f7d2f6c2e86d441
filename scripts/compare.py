"""Generate one prompt from the same seed at several PLADIS settings and write one labelled grid plus its settings.

With no arguments it compares λ = 0 and 2 on the embedded toy SDXL model (`asset/toy-sdxl`, trained on coloured
shapes by `scripts/toy/train.py`) on CPU in seconds; `--pipeline sdxl|sdxl-seg|controlnet|flux`, `--model` and
`--scales 0,1,1.5,2` choose the real job; `--windows 0:0.5,0.5:1` or `--layer-sets "mid;up_blocks"` sweep the step
window or the layers at `--pladis-scale` instead. `--pipeline auto --model <folder or hub id>` loads any pipeline
of a supported family with `DiffusionPipeline.from_pretrained` (its stock class) and switches PLADIS on with
`apply_pladis`.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from attention.validation import check_pladis_scale, check_pladis_window
from scripts.cli import checks
from scripts.cli.captions import method_of, run_caption, scale_label
from scripts.cli.grid import save_grid
from scripts.cli.options import (
    add_generation_options,
    add_model_options,
    add_settings_option,
    comma_words,
    finish_common_options,
    parse_scales,
    parse_with_settings,
    prefer_toy,
)
from scripts.cli.parsers import command_parser
from scripts.cli.records import run_settings, write_json
from scripts.cli.registry import call_parameters, pladis_arguments


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    """The options of one comparison (prompt, λ, sweep, model, generation, `--settings`), without `--out`: also the
    web demo's (`scripts/demo.py`), where they choose the loaded model and the page's defaults."""
    parser = command_parser(description or __doc__)
    parser.add_argument("--prompt", default=None, help="default: a toy caption on the toy, else an astronaut")
    parser.add_argument("--pladis-scale", type=float, default=2.0, help="λ of the PLADIS panel (default 2.0)")
    parser.add_argument("--scales", default=None, help="λ sweep, e.g. 0,1,1.5,2 (default: 0 and --pladis-scale)")
    add_model_options(parser)
    add_generation_options(parser)
    add_settings_option(parser)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and check the options; `--settings FILE` starts from the arguments a grid's JSON recorded."""
    parser = build_parser()
    parser.add_argument(
        "--windows",
        default=None,
        help="step-window sweep at --pladis-scale after a panel without PLADIS, e.g. 0:1,0:0.5,0.5:1 (start:stop)",
    )
    parser.add_argument(
        "--layer-sets",
        default=None,
        help="layer sweep at --pladis-scale after a panel without PLADIS: sets of --pladis-layers ids separated by "
        "';', e.g. 'mid;down_blocks;up_blocks'",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("outputs/compare.png"),
        help="grid PNG to write; its settings go to the same name with .json",
    )
    args = parse_with_settings(parser, argv)
    if problem := checks.output_file_problem("--out", args.out, companions=[".json"]):
        parser.error(problem)
    return check_args(parser, args)


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """Check λ and the sweep, and fill the defaults that depend on the pipeline and model (in place); a problem is
    `parser.error(message)` (the web demo passes a parser that raises it as a ValueError)."""
    for option in ("windows", "layer_sets"):  # compare.py's sweeps besides λ (the demo sweeps λ only)
        setattr(args, option, getattr(args, option, None))
    sweeps = [option for option in ("scales", "windows", "layer_sets") if getattr(args, option) is not None]
    if len(sweeps) > 1:
        parser.error(f"give one sweep: {' and '.join('--' + option.replace('_', '-') for option in sweeps)} both given")
    try:
        check_pladis_scale(args.pladis_scale)
        args.scales = parse_scales(args.scales) if args.scales is not None else None
        args.windows = parse_windows(args.windows) if args.windows is not None else None
        args.layer_sets = parse_layer_sets(args.layer_sets) if args.layer_sets is not None else None
    except (TypeError, ValueError) as error:
        parser.error(str(error))
    if args.scales is None and args.windows is None and args.layer_sets is None:
        args.scales = [0.0, args.pladis_scale]
    from scripts.cli.loading import default_device  # imports torch: only once the options parsed

    args.device = args.device or default_device()  # recorded, so a rerun uses the same kind of device
    prefer_toy(args, "a photo of an astronaut riding a horse on the moon")
    args = finish_common_options(parser, args)
    names = checks.text_attention_names(args.model) if args.layer_sets else None
    for layer_set in args.layer_sets or []:
        if problem := checks.pladis_layers_problem("--layer-sets", layer_set, names):
            parser.error(problem)
    return args


def parse_windows(text_or_pairs: str | list) -> list[list[float]]:
    """`"0:1,0:0.5"` (or the recorded `[[0, 1], [0, 0.5]]`) → `[[0.0, 1.0], [0.0, 0.5]]`, each window checked."""
    if isinstance(text_or_pairs, str):
        try:
            pairs = [[float(bound) for bound in item.split(":")] for item in text_or_pairs.split(",") if item.strip()]
        except ValueError:
            raise ValueError(f"--windows: expected start:stop pairs like 0:0.5,0.5:1, got {text_or_pairs!r}") from None
    else:
        pairs = [list(pair) for pair in text_or_pairs]
    if not pairs or any(len(pair) != 2 for pair in pairs):
        raise ValueError(f"--windows: expected start:stop pairs like 0:0.5,0.5:1, got {text_or_pairs!r}")
    return [list(check_pladis_window(*pair, ("--windows start", "stop"))) for pair in pairs]


def parse_layer_sets(text_or_sets: str | list) -> list[list[str]]:
    """`"mid;up_blocks.0,down_blocks.2"` (or the recorded list of lists) → `[["mid"], ["up_blocks.0",
    "down_blocks.2"]]`."""
    sets = [comma_words(item) for item in text_or_sets.split(";")] if isinstance(text_or_sets, str) else text_or_sets
    if not sets or any(not layer_set for layer_set in sets):
        raise ValueError(
            f"--layer-sets: expected ';'-separated sets of layer ids like 'mid;up_blocks', got {text_or_sets!r}"
        )
    return [list(layer_set) for layer_set in sets]


@dataclass(frozen=True)
class Panel:
    """One panel of the grid: λ, the PLADIS arguments it sets besides the options' (window, layers), its label."""

    scale: float
    label: str
    overrides: dict[str, Any] = field(default_factory=dict)


def panel_label(args: argparse.Namespace, scale: float) -> str:
    """A panel's label: the run's guidance method and its λ ("CFG 5 (no PLADIS)", "SEG 3 + PLADIS scale=2")."""
    return scale_label(method_of(args), scale)


def panels(args: argparse.Namespace) -> list[Panel]:
    """The λ sweep, or a panel without PLADIS followed by the window or layer sweep at `--pladis-scale`."""
    if args.scales is not None:
        return [Panel(scale, panel_label(args, scale)) for scale in args.scales]
    scale, head = args.pladis_scale, panel_label(args, args.pladis_scale)
    if args.windows is not None:
        sweep = [
            Panel(scale, f"{head}, steps {start:g}-{stop:g}", {"pladis_start": start, "pladis_stop": stop})
            for start, stop in args.windows
        ]
    else:
        sweep = [
            Panel(scale, f"{head} on {','.join(layers)}", {"pladis_layers": list(layers)}) for layers in args.layer_sets
        ]
    return [Panel(0.0, panel_label(args, 0.0)), *sweep]


def generate_panels(args: argparse.Namespace) -> tuple[list[Image.Image], list[str]]:
    """The grid's images and labels: the control image (ControlNet only), then one image per λ, same seed, each
    labelled with its guidance method and λ."""
    from scripts.cli.loading import call_options, image_size, load_pipeline

    pipe = load_pipeline(args)
    height, width = image_size(pipe, args)
    options = call_options(pipe, args, height, width)
    images, labels = [], []
    if "image" in options:
        images.append(options["image"])
        labels.append(f"control image ({args.preprocess or 'as given'})")
    grid = panels(args)
    with tqdm(total=len(grid) * args.steps, desc="compare", unit="step") as bar:
        images += panel_images(pipe, args, options, grid, bar)
    labels += [panel.label for panel in grid]
    return images, labels


def scale_images(
    pipe: Any, args: argparse.Namespace, options: dict[str, Any], scales: list[float], bar: Any
) -> list[Image.Image]:
    """One image per λ in `scales` (`panel_images` of a λ sweep)."""
    return panel_images(pipe, args, options, [Panel(scale, panel_label(args, scale)) for scale in scales], bar)


def panel_images(
    pipe: Any, args: argparse.Namespace, options: dict[str, Any], grid: list[Panel], bar: Any
) -> list[Image.Image]:
    """One image per panel, each from `args.seed`, on a loaded pipeline shared as it is: λ and the panel's window
    or layers go through its PLADIS arguments, or for a stock pipeline through `apply_pladis` around the call
    (checked to fit the denoiser before any generation). `bar.update(n)` hears of every denoising step (a tqdm
    bar or the like)."""
    from attention.integration.install import apply_pladis
    from scripts.cli.loading import seeded_generator, step_progress

    accepted = call_parameters(type(pipe))
    if "pladis_scale" not in accepted:
        for panel in grid:
            if panel.scale > 0:
                with apply_pladis(pipe, panel.scale, **{**pladis_arguments(args), **panel.overrides}):
                    pass
    options = dict(options)
    images = []
    for panel in grid:
        if "callback_on_step_end" in accepted:
            options["callback_on_step_end"] = step_progress(bar)
        generator = seeded_generator(args.seed)
        if "pladis_scale" in accepted:
            call = {**options, **panel.overrides}
            result = pipe(prompt=args.prompt, generator=generator, pladis_scale=panel.scale, **call)
        else:
            with apply_pladis(pipe, panel.scale, **{**pladis_arguments(args), **panel.overrides}):
                result = pipe(prompt=args.prompt, generator=generator, **options)
        if "callback_on_step_end" not in accepted:
            bar.update(args.steps)
        images.append(first_image(result))
    return images


def first_image(result) -> Image.Image:
    """The first image of a pipeline's output (of a video pipeline: the first frame of the first video)."""
    if hasattr(result, "images"):
        return result.images[0]
    frame = result.frames[0][0]
    return (
        frame if isinstance(frame, Image.Image) else Image.fromarray((np.asarray(frame) * 255).round().astype("uint8"))
    )


def main(argv: list[str] | None = None) -> Path:
    """Write the grid and, next to it, a JSON of every setting (rerun it with `--settings`); return the grid path."""
    args = parse_args(argv)
    images, labels = generate_panels(args)
    path = save_grid(images, labels, args.out, caption=run_caption(args))
    settings = write_json(path.with_suffix(".json"), run_settings("scripts.compare", args, argv, panels=labels))
    print(f"wrote {path} and {settings}")
    return path


if __name__ == "__main__":
    main()
