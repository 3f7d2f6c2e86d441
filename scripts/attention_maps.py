"""Render per-token cross-attention heat maps, dense (softmax) against PLADIS, over the image they produced.

One generation at λ = `--pladis-scale` records both maps from the same attention scores (chosen layer groups
and steps) through recording processors, and writes one labelled grid: a row per kind, a column per token.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from attention.validation import check_pladis_scale
from scripts.cli import checks
from scripts.cli.assets import model_source
from scripts.cli.captions import run_caption
from scripts.cli.grid import grid_font, save_grid
from scripts.cli.options import (
    add_generation_options,
    add_model_options,
    add_settings_option,
    comma_words,
    finish_common_options,
    parse_with_settings,
    prefer_toy,
)
from scripts.cli.parsers import command_parser
from scripts.cli.records import run_settings, write_json

if TYPE_CHECKING:
    import torch

    from attention.diagnostics.attention_maps import AttentionMapStore

HEAT_OPACITY = 0.6
TOY_TOKENS = ("red", "circle", "left", "blue", "square", "right")  # the toy prompt's content words


def step_indices(text: str) -> list[int] | None:
    """`"all"` → None; `"0-3,7"` → [0, 1, 2, 3, 7] (denoising step indices, from 0)."""
    if text.strip() == "all":
        return None
    steps: list[int] = []
    try:
        for item in comma_words(text):
            first, _, last = item.partition("-")
            steps += range(int(first), int(last or first) + 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'all' or steps like 0-3,7, got {text!r}") from None
    return steps


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and check the options (`--settings FILE` starts from a recorded run)."""
    parser = command_parser(__doc__)
    parser.add_argument(
        "--prompt", default=None, help="default: a toy caption on the toy, else a red cube on a blue ball"
    )
    parser.add_argument("--pladis-scale", type=float, default=2.0, help="λ of the generation and of the PLADIS maps")
    parser.add_argument(
        "--layer-groups",
        type=comma_words,
        default=None,
        help="U-Net layer groups whose maps are averaged: any of down,mid,up (default all)",
    )
    parser.add_argument(
        "--record-steps",
        type=step_indices,
        default=None,
        help="denoising steps to average, e.g. 0-9 or 0,5 (default: all)",
    )
    parser.add_argument(
        "--tokens",
        type=comma_words,
        default=None,
        help="prompt words to show (default: every prompt token, up to --max-tokens)",
    )
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("outputs/attention_maps.png"),
        help="grid PNG to write; its settings go to the same name with .json",
    )
    add_model_options(parser)
    add_generation_options(parser)
    add_settings_option(parser)
    args = parse_with_settings(parser, argv)
    from attention.diagnostics.attention_maps import LAYER_GROUPS  # imports torch: only once the options parsed
    from scripts.cli.loading import default_device

    try:
        check_pladis_scale(args.pladis_scale)
    except (TypeError, ValueError) as error:
        parser.error(str(error))
    args.layer_groups = list(LAYER_GROUPS) if args.layer_groups is None else args.layer_groups
    unknown = sorted(set(args.layer_groups) - set(LAYER_GROUPS))
    if unknown or not args.layer_groups:
        parser.error(f"--layer-groups takes any of {','.join(LAYER_GROUPS)}, got {','.join(args.layer_groups)}")
    if args.pipeline == "flux":
        parser.error("attention maps are recorded on U-Net cross-attention: --pipeline sdxl, sdxl-seg or controlnet")
    if args.max_tokens < 1:
        parser.error(f"--max-tokens must be >= 1, got {args.max_tokens}")
    if problem := checks.output_file_problem("--out", args.out, companions=[".json"]):
        parser.error(problem)
    args.device = args.device or default_device()
    prompt_given = args.prompt is not None
    if prefer_toy(args, "a photo of a red cube on a blue ball") and not prompt_given and args.tokens is None:
        args.tokens = list(TOY_TOKENS)
    args = finish_common_options(parser, args)
    if args.record_steps is not None:
        if not args.record_steps:
            parser.error("--record-steps names no step; give steps like 0-3,7 or 'all'")
        beyond = sorted(step for step in set(args.record_steps) if step >= args.steps)
        if beyond:
            parser.error(
                f"--record-steps {','.join(map(str, beyond))}: the run has {args.steps} steps, "
                f"numbered 0 to {args.steps - 1}"
            )
    tokenizer = prompt_tokenizer(args.model) if args.tokens is not None else None
    if tokenizer is not None:
        try:
            chosen_tokens(tokenizer, args.prompt, args.tokens, args.max_tokens)
        except ValueError as error:
            parser.error(str(error))
    return args


def prompt_tokenizer(model: str) -> object | None:
    """The pipeline's first tokenizer, loaded alone (no weights) from a local or cached model, so `--tokens`
    is checked while parsing; None when it is not on this machine (then it is checked after loading)."""
    from transformers import CLIPTokenizer

    try:
        return CLIPTokenizer.from_pretrained(model_source(model), subfolder="tokenizer", local_files_only=True)
    except (OSError, ValueError):
        return None


def prompt_tokens(tokenizer: object, prompt: str) -> list[tuple[int, str]]:
    """(position, text) of each prompt token in the text encoder's sequence (start/end tokens left out)."""
    ids = tokenizer(prompt, truncation=True).input_ids
    special = set(tokenizer.all_special_ids)
    tokens = tokenizer.convert_ids_to_tokens(ids)
    return [
        (position, token.replace("</w>", ""))
        for position, (token_id, token) in enumerate(zip(ids, tokens, strict=True))
        if token_id not in special
    ]


def chosen_tokens(tokenizer: object, prompt: str, words: list[str] | None, limit: int) -> list[tuple[int, str]]:
    """The tokens to draw: those whose text is in `words` (all prompt tokens when None), at most `limit`."""
    tokens = prompt_tokens(tokenizer, prompt)
    if words is not None:
        wanted = {word.lower() for word in words}
        tokens = [(position, text) for position, text in tokens if text.lower() in wanted]
        if not tokens:
            raise ValueError(f"none of --tokens {words} is a token of the prompt {prompt!r}")
    return tokens[:limit]


def heat_colors(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] → RGB in [0, 1] on a blue-cyan-yellow-red ("jet") scale."""
    values = np.clip(values, 0.0, 1.0)[..., None]
    centres = np.array([0.75, 0.5, 0.25])  # red, green, blue peak positions
    return np.clip(1.5 - np.abs(4.0 * (values - centres)), 0.0, 1.0)


def overlay(image: Image.Image, heat: np.ndarray) -> Image.Image:
    """`image` with `heat` (values in [0, 1], any resolution) upsampled and blended over it."""
    heat_image = Image.fromarray(np.uint8(np.round(np.clip(heat, 0, 1) * 255)), mode="L")
    heat_image = heat_image.resize(image.size, Image.BILINEAR)
    colors = heat_colors(np.asarray(heat_image, dtype=np.float64) / 255.0)
    base = np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
    blended = (1 - HEAT_OPACITY) * base + HEAT_OPACITY * colors
    return Image.fromarray(np.uint8(np.round(blended * 255)))


def heat_panels(
    image: Image.Image, dense: torch.Tensor, pladis: torch.Tensor, tokens: list[tuple[int, str]]
) -> tuple[list[Image.Image], list[Image.Image]]:
    """One overlay per token for each kind; a token's two maps share one colour scale (0 to their max),
    so the panels show where PLADIS moves the attention mass. Negative PLADIS weights show as 0."""
    dense_panels, pladis_panels = [], []
    for position, _ in tokens:
        dense_map, pladis_map = dense[position].numpy(), pladis[position].numpy()
        top = max(float(dense_map.max()), float(pladis_map.max()), 1e-12)
        dense_panels.append(overlay(image, dense_map / top))
        pladis_panels.append(overlay(image, pladis_map / top))
    return dense_panels, pladis_panels


def colour_bar(width: int = 256, height: int = 14) -> Image.Image:
    """The legend of the heat maps: their colour scale, from 0 to the token's largest weight in its two maps."""
    font = grid_font()
    text = "= the token's largest weight in its two maps"
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength
    legend = Image.new("RGB", (int(36 + width + 8 + measure(text, font=font)) + 8, height + 6), "white")
    draw = ImageDraw.Draw(legend)
    draw.text((4, 1), "0", fill="black", font=font)
    ramp = np.uint8(np.round(heat_colors(np.linspace(0.0, 1.0, width)) * 255))
    legend.paste(Image.fromarray(np.repeat(ramp[None], height, axis=0)), (20, 3))
    draw.text((28 + width, 1), text, fill="black", font=font)
    return legend


def record_maps(args: argparse.Namespace) -> tuple[Image.Image, AttentionMapStore, list[tuple[int, str]]]:
    """Load the pipeline and generate the image at λ = `args.pladis_scale`, recording both kinds of maps."""
    from scripts.cli.loading import load_pipeline  # imports torch: only once the options parsed

    pipe = load_pipeline(args)
    with tqdm(total=args.steps, desc="attention maps", unit="step") as bar:
        return recorded_generation(pipe, args, bar)


def recorded_generation(
    pipe: Any, args: argparse.Namespace, bar: Any
) -> tuple[Image.Image, AttentionMapStore, list[tuple[int, str]]]:
    """Generate the image at λ = `args.pladis_scale` on a loaded U-Net pipeline (a PLADIS one or its stock class),
    recording both kinds of maps on the way; `bar.update(1)` hears of each denoising step. The pipeline's
    processors are restored afterwards, so a shared pipeline serves the next call unchanged."""
    from attention.diagnostics.attention_maps import AttentionMapStore, recording_attention_maps
    from attention.integration.install import apply_pladis
    from scripts.cli.loading import call_options, image_size, pladis_arguments, seeded_generator, step_progress

    height, width = image_size(pipe, args)
    options = call_options(pipe, args, height, width)
    uses_cfg = args.guidance_scale > 1 and getattr(pipe.unet.config, "time_cond_proj_dim", None) is None
    condition_rows = slice(1, 2) if uses_cfg else slice(0, 1)  # batch [uncond, cond(, perturbed)] or [cond(, ...)]
    tokens = chosen_tokens(pipe.tokenizer, args.prompt, args.tokens, args.max_tokens)
    store = AttentionMapStore(args.record_steps)
    # PLADIS (λ, α, window, layers, ControlNet) from apply_pladis around the call, which a PLADIS pipeline called
    # without PLADIS keywords keeps; the recorders wrap the processors it installed.
    options = {name: value for name, value in options.items() if not name.startswith("pladis_")}
    pladis = {**pladis_arguments(args), "pladis_controlnet": bool(getattr(args, "pladis_controlnet", False))}
    with (
        apply_pladis(pipe, args.pladis_scale, **pladis),
        recording_attention_maps(
            pipe.unet,
            store,
            args.pladis_scale,
            args.pladis_alpha,
            args.layer_groups,
            condition_rows,
            install_pladis=False,
        ),
    ):
        result = pipe(
            args.prompt, generator=seeded_generator(args.seed), callback_on_step_end=step_progress(bar), **options
        )
    return result.images[0], store, tokens


def map_panels(
    args: argparse.Namespace, image: Image.Image, store: AttentionMapStore, tokens: list[tuple[int, str]]
) -> tuple[list[Image.Image], list[str]]:
    """The grid's panels and labels, a row per kind: the image and one softmax overlay per token, then the
    layers the maps average over and one PLADIS overlay per token (`len(tokens) + 1` columns)."""
    dense, pladis = store.maps("dense", args.layer_groups), store.maps("pladis", args.layer_groups)
    dense_panels, pladis_panels = heat_panels(image, dense, pladis, tokens)
    where = f"{'+'.join(args.layer_groups)} layers"
    images = [image, *dense_panels, image, *pladis_panels]
    labels = [
        f"image (PLADIS scale={args.pladis_scale:g})",
        *(f"softmax: {text}" for _, text in tokens),
        f"maps of {where}",
        *(f"PLADIS {args.pladis_scale:g}: {text}" for _, text in tokens),
    ]
    return images, labels


def map_caption(args: argparse.Namespace) -> list[str]:
    """The caption under the maps: the run (prompt, steps, guidance, model) and what the two rows are."""
    where = f"{'+'.join(args.layer_groups)} layers"
    steps = "all steps" if args.record_steps is None else f"steps {','.join(map(str, args.record_steps))}"
    return [
        *run_caption(args),
        f"Rows: the dense softmax map and the PLADIS map (scale {args.pladis_scale:g}) of each token, from the same "
        f"attention scores of this one generation, averaged over heads, {where} and {steps} (conditional row). "
        "A token's two maps share one colour scale; negative PLADIS weights show as 0.",
    ]


def main(argv: list[str] | None = None) -> Path:
    """Write the heat-map grid (with its colour bar and caption) and its settings JSON; return the grid path."""
    args = parse_args(argv)
    image, store, tokens = record_maps(args)
    images, labels = map_panels(args, image, store, tokens)
    columns = len(tokens) + 1
    path = save_grid(images, labels, args.out, columns=columns, caption=map_caption(args), legend=colour_bar())
    recorded_steps = sorted(store.steps) if store.steps is not None else "all"
    settings = run_settings(
        "scripts.attention_maps",
        args,
        argv,
        tokens=[text for _, text in tokens],
        recorded_steps=recorded_steps,
        recorded_layer_calls=store.counts,
    )
    settings_path = write_json(path.with_suffix(".json"), settings)
    print(f"wrote {path} and {settings_path} (its settings: rerun with --settings)")
    return path


if __name__ == "__main__":
    main()
