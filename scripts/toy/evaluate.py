"""Prompt-following of `asset/toy-sdxl` with and without PLADIS, read by the toy scorer, with paired bootstrap
intervals.

One command generates the same two-object prompts from the same seeds for every (guidance, λ, α) setting,
reads each image half with `scripts/toy/scorer.py`, and writes a table of colour / shape / object / image
accuracy (95 % bootstrap intervals) and of the paired change against λ = 0 at the same guidance:

    python -m scripts.toy.evaluate --out outputs/toy-eval

Settings already in `OUT/results.json` (same model, prompts and steps) are reused, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from attention.validation import check_pladis_alpha, check_pladis_scale
from scripts.cli.assets import TOY_MODEL, model_source, repository_relative
from scripts.cli.entry_points import invoked_command
from scripts.cli.options import comma_floats
from scripts.cli.parsers import command_parser
from scripts.cli.records import package_versions, repository_commit, write_json, write_text
from scripts.toy.data import evaluation_scenes
from scripts.toy.scorer import read_scene, score_scene

METRICS = ("colour", "shape", "object", "image")


def setting_key(guidance: float, scale: float, alpha: float) -> str:
    return f"g{guidance:g}_l{scale:g}" + (f"_a{alpha:g}" if scale > 0 else "")


def settings_grid(guidances: list[float], scales: list[float], alphas: list[float]) -> list[tuple[float, float, float]]:
    """(guidance, λ, α) per setting in the order they are run: per guidance λ = 0 first (once: α does not
    matter there), then α by α the other λ in the order given, so a time-limited run has the main ones."""
    grid = []
    for guidance in guidances:
        grid.append((guidance, 0.0, alphas[0]))
        grid += [(guidance, scale, alpha) for alpha in alphas for scale in scales if scale > 0]
    return grid


def paired_bootstrap(base: np.ndarray, other: np.ndarray, resamples: int, seed: int) -> tuple[float, float, float]:
    """Mean of `other − base` over the same prompts and seeds, with its 95 % percentile bootstrap interval."""
    difference = np.asarray(other, np.float64) - np.asarray(base, np.float64)
    return (float(difference.mean()), *bootstrap_interval(difference, resamples, seed))


def bootstrap_interval(values: np.ndarray, resamples: int, seed: int) -> tuple[float, float]:
    """95 % percentile bootstrap interval of the mean of `values` (resampling images with replacement)."""
    values = np.asarray(values, np.float64)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def generate(
    pipe,
    captions: list[str],
    seeds: list[int],
    guidance: float,
    scale: float,
    alpha: float,
    steps: int,
    batch_size: int,
) -> list:
    """One image per caption, each from its own CPU generator seed (the same noise in every setting)."""
    import torch

    images = []
    for start in range(0, len(captions), batch_size):
        chunk = slice(start, start + batch_size)
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds[chunk]]
        images += pipe(
            captions[chunk],
            generator=generators,
            num_inference_steps=steps,
            guidance_scale=guidance,
            pladis_scale=scale,
            pladis_alpha=alpha,
        ).images
    return images


def score_images(images: list, scenes: list) -> dict[str, list[float]]:
    """Per-image colour / shape / object / image scores against the prompted scenes."""
    scores = [score_scene(scene, read_scene(image)) for image, scene in zip(images, scenes, strict=True)]
    return {metric: [getattr(score, metric) for score in scores] for metric in METRICS}


def format_table(results: dict, resamples: int, seed: int) -> str:
    """Markdown: per setting, each metric's mean [95 % CI], then the paired change in image accuracy vs λ = 0."""
    held = np.array(results["held_out"], bool)
    lines = [
        "| guidance | λ | α | colour | shape | object | image | Δ image vs λ=0 [95 % CI] | image, held-out pairs |",
        "| ---: | ---: | ---: | --- | --- | --- | --- | --- | --- |",
    ]
    ordered = sorted(
        results["settings"].values(),
        key=lambda entry: (entry["guidance"], entry["pladis_scale"], entry["pladis_alpha"]),
    )
    for entry in ordered:
        guidance, scale, alpha = entry["guidance"], entry["pladis_scale"], entry["pladis_alpha"]
        cells = []
        for metric in METRICS:
            values = np.array(entry["scores"][metric])
            low, high = bootstrap_interval(values, resamples, seed)
            cells.append(f"{values.mean():.3f} [{low:.2f}, {high:.2f}]")
        base = results["settings"][setting_key(guidance, 0.0, alpha)]["scores"]["image"]
        if scale == 0:
            change = "—"
        else:
            mean, low, high = paired_bootstrap(np.array(base), np.array(entry["scores"]["image"]), resamples, seed)
            change = f"{mean:+.3f} [{low:+.2f}, {high:+.2f}]"
        held_image = np.array(entry["scores"]["image"])[held].mean() if held.any() else float("nan")
        lines.append(
            f"| {guidance:g} | {scale:g} | {'—' if scale == 0 else f'{alpha:g}'} | {' | '.join(cells)} | "
            f"{change} | {held_image:.3f} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = command_parser(__doc__)
    parser.add_argument(
        "--model", default=repository_relative(TOY_MODEL), help="toy pipeline folder (default asset/toy-sdxl)"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("outputs/toy-eval"), help="folder for results.json and table.md"
    )
    parser.add_argument("--count", type=int, default=200, help="prompts (one image each) per setting (default 200)")
    parser.add_argument(
        "--held-out-share",
        type=float,
        default=0.3,
        help="share of prompts from the 60 held-out pairs (default 0.3: each held-out pair once)",
    )
    parser.add_argument(
        "--guidance", type=comma_floats, default=[5.0, 1.0], help="CFG scales, run in this order (default 5,1)"
    )
    parser.add_argument(
        "--scales",
        type=comma_floats,
        default=[0.0, 2.0, 1.0, 3.0, 1.5],
        help="λ values, run in this order (default 0,2,1,3,1.5)",
    )
    parser.add_argument("--alphas", type=comma_floats, default=[1.5, 2.0], help="α values (default 1.5,2)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0, help="image i uses seed + i")
    parser.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (results depend on it)")
    parser.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="start no new setting after this many minutes (the table then says which ran)",
    )
    args = parser.parse_args(argv)
    if not (Path(model_source(args.model)) / "model_index.json").exists():
        parser.error(f"--model: no pipeline folder at {args.model} (train it with scripts/toy/train.py)")
    for name in ("count", "steps", "batch_size", "resamples", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 0 <= args.held_out_share <= 1:
        parser.error(f"--held-out-share must be in [0, 1], got {args.held_out_share}")
    try:
        args.scales = [check_pladis_scale(value) for value in args.scales]
        args.alphas = [check_pladis_alpha(value) for value in args.alphas]
    except (TypeError, ValueError) as error:
        parser.error(str(error))
    if not args.guidance or not args.alphas or 0.0 not in args.scales:
        parser.error("--guidance and --alphas need values, and --scales must include 0 (the baseline)")
    return args


def main(argv: list[str] | None = None) -> dict:
    """Generate, score and tabulate; writes OUT/results.json (after every setting) and OUT/table.md."""
    args = parse_args(argv)
    import torch  # torch and diffusers load once the options parsed

    torch.set_num_threads(args.threads)
    from pipeline.pipeline_sdxl import PLADISStableDiffusionXLPipeline

    pipe = PLADISStableDiffusionXLPipeline.from_pretrained(
        model_source(args.model), dtype=torch.float32, use_safetensors=True
    )
    pipe.set_progress_bar_config(disable=True)
    chosen = evaluation_scenes(args.count, held_out_share=args.held_out_share)
    scenes = [scene for scene, _, _ in chosen]
    captions = [scene.caption(swap=swap) for scene, _, swap in chosen]
    seeds = [args.seed + index for index in range(args.count)]
    identity = {"model": args.model, "captions": captions, "seeds": seeds, "steps": args.steps, "threads": args.threads}
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    if results.get("identity") != identity:
        results = {"identity": identity, "held_out": [held for _, held, _ in chosen], "settings": {}}
    results.update(
        versions=package_versions(),
        repository_commit=repository_commit(),
        command=[*invoked_command("scripts.toy.evaluate"), *(sys.argv[1:] if argv is None else argv)],
    )
    grid = settings_grid(args.guidance, args.scales, args.alphas)
    began = time.time()
    for number, (guidance, scale, alpha) in enumerate(grid, 1):
        key = setting_key(guidance, scale, alpha)
        if key in results["settings"]:
            continue
        if args.max_minutes is not None and time.time() - began > args.max_minutes * 60:
            print(f"--max-minutes {args.max_minutes:g} reached: {key} and later settings not run", flush=True)
            break
        started = time.time()
        images = generate(pipe, captions, seeds, guidance, scale, alpha, args.steps, args.batch_size)
        scores = score_images(images, scenes)
        results["settings"][key] = {
            "guidance": guidance,
            "pladis_scale": scale,
            "pladis_alpha": alpha,
            "scores": scores,
            "seconds": time.time() - started,
        }
        write_json(results_path, results)
        print(
            f"[{number}/{len(grid)}] {key}: image accuracy {np.mean(scores['image']):.3f} "
            f"({time.time() - started:.0f} s)",
            flush=True,
        )
    done = [setting_key(*setting) for setting in grid if setting_key(*setting) in results["settings"]]
    results["settings"] = {key: results["settings"][key] for key in done}
    results["complete"] = len(done) == len(grid)
    table = format_table(results, args.resamples, args.seed)
    if not results["complete"]:
        table += f"\n\nReduced: {len(done)} of the {len(grid)} settings ran; the same command resumes the rest."
    write_json(results_path, results)
    write_text(args.out / "table.md", table + "\n")
    print(table)
    return results


if __name__ == "__main__":
    main()
