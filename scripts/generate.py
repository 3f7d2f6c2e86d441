"""Generate every prompt of a file at each PLADIS scale into one folder per scale, skipping images already there.

It runs on one device as `python -m scripts.generate`, and unchanged on several GPUs or machines under
`accelerate launch -m scripts.generate`, which splits the prompts between processes; each image depends only on its
prompt and seed.
"""

from __future__ import annotations

import argparse
import fcntl
import json
from itertools import groupby
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo
from tqdm.auto import tqdm

from scripts.cli import checks
from scripts.cli.assets import model_source
from scripts.cli.options import (
    add_generation_options,
    add_model_options,
    add_settings_option,
    finish_common_options,
    parse_scales,
    parse_with_settings,
    prefer_toy,
)
from scripts.cli.parsers import command_parser
from scripts.cli.prompts import (
    MANIFEST,
    SETTINGS,
    PromptEntry,
    image_path,
    png_damage,
    read_prompts,
    scale_folder,
)
from scripts.cli.records import read_settings, read_text_file, run_settings, write_image, write_json, write_text

LOCK = ".generate.lock"  # held while a run checks the folder and records its settings
# Options that may change between runs into the same folder without changing any existing image
# (the prompts themselves are compared through the manifest, line by line).
_RESUMABLE_OPTIONS = {"batch_size", "device", "out", "settings", "scales", "prompts"}
# Options naming a local folder or file (or a hub id): compared as the one path they name, however spelt.
_PATH_OPTIONS = {"model", "controlnet", "lora", "control_image", "depth_model"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and check the options (`--settings FILE` starts from a recorded run)."""
    parser = command_parser(__doc__)
    parser.add_argument(
        "--prompts",
        type=Path,
        default=None,
        help='prompt file: one prompt a line, or JSON lines {"prompt": ..., "seed": ...}',
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("outputs/generated"),
        help="output folder: one subfolder per scale (pladis_0, pladis_2, ...)",
    )
    parser.add_argument("--scales", default="0,2", help="λ values, e.g. 0,2 (default: without and with PLADIS)")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=1,
        help="prompts per pipeline call (1 keeps images bit-identical whatever the split)",
    )
    add_model_options(parser)
    add_generation_options(parser)
    add_settings_option(parser)
    args = parse_with_settings(parser, argv)
    if args.prompts is None:
        parser.error("--prompts FILE is required")
    if not args.prompts.is_file():
        parser.error(f"--prompts: no such file: {args.prompts}")
    try:
        entries = read_prompts(args.prompts)  # read again in main: here only so a bad file is a usage error
    except ValueError as error:
        parser.error(f"--prompts: {error}")
    if problem := resolved_seed_problem(entries, args.seed):
        parser.error(problem)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    try:
        args.scales = parse_scales(args.scales)
    except (TypeError, ValueError) as error:
        parser.error(str(error))
    if problem := shared_folder_problem(args.scales):
        parser.error(problem)
    if problem := checks.output_folder_problem("--out", args.out):
        parser.error(problem)
    prefer_toy(args)
    return finish_common_options(parser, args)


def shared_folder_problem(scales: list[float]) -> str | None:
    """λ values whose folders would be one (`2,2`, or `1,1.0000001`: names keep 6 significant digits), or None."""
    by_folder: dict[str, list[float]] = {}
    for scale in scales:
        by_folder.setdefault(scale_folder(Path(), scale).name, []).append(scale)
    clashes = {name: values for name, values in by_folder.items() if len(values) > 1}
    if not clashes:
        return None
    details = "; ".join(f"{', '.join(repr(value) for value in values)} -> {name}" for name, values in clashes.items())
    return f"--scales: these values would write into one folder ({details}); give each λ once, distinct in 6 digits"


def counted(count: int, noun: str) -> str:
    """`1 image`, `2 images`, `0 images`."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def prompt_seed(entry: PromptEntry, base_seed: int) -> int:
    """The prompt's own seed, else `base_seed + index`: the same whatever the number of processes."""
    return entry.seed if entry.seed is not None else base_seed + entry.index


def resolved_seed_problem(entries: list[PromptEntry], base_seed: int) -> str | None:
    """Why a prompt without its own seed would get `--seed` + its index outside the seeds a generator takes."""
    for entry in entries:
        if entry.seed is None and (problem := checks.seed_problem(prompt_seed(entry, base_seed))):
            return f"--seed {base_seed}: prompt {entry.index} gets --seed + its index, and {problem}"
    return None


def runs_on_cpu(args: argparse.Namespace) -> bool:
    """CPU processes: asked for, set by `accelerate launch --cpu`, or no accelerator present."""
    import torch
    from accelerate.utils import parse_flag_from_env

    asked = args.device is not None and str(args.device).startswith("cpu")
    return asked or parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.accelerator.is_available()


def manifest_records(entries: list[PromptEntry], base_seed: int) -> list[dict]:
    """The manifest lines: every prompt with its resolved seed, in index order."""
    return [
        {
            "index": entry.index,
            "prompt": entry.prompt,
            "seed": prompt_seed(entry, base_seed),
            "negative_prompt": entry.negative_prompt,
        }
        for entry in entries
    ]


def check_same_settings(out: Path, settings: dict, records: list[dict]) -> str | None:
    """Why this run may not write into `out`, or None: its images were made with other settings or other
    prompts at the same indices (they would mix); adding prompts at the end or adding scales is fine."""
    path = Path(out) / SETTINGS
    if path.exists():
        before, now = read_settings(path)["arguments"], settings["arguments"]
        changed = sorted(
            name
            for name in set(before) | set(now)
            if name not in _RESUMABLE_OPTIONS and _compared(name, before.get(name)) != _compared(name, now.get(name))
        )
        if changed:
            details = ", ".join(f"{name}: {before.get(name)!r} -> {now.get(name)!r}" for name in changed)
            return f"{out} holds images made with other settings ({details}); choose a new --out"
    manifest = Path(out) / MANIFEST
    if manifest.exists():
        earlier = [json.loads(line) for line in read_text_file(manifest).splitlines() if line.strip()]
        for old, new in zip(earlier, records, strict=False):
            if old != new:
                return (
                    f"{out} holds images of other prompts or seeds (index {old['index']}: "
                    f"{old['prompt']!r} seed {old['seed']} -> {new['prompt']!r} seed {new['seed']}); "
                    "choose a new --out"
                )
    return None


def _compared(name: str, value: object) -> object:
    """A recorded option as resuming compares it: a path option as the absolute path it names (`asset/tiny-sdxl/`,
    `./asset/tiny-sdxl` and the absolute path are one model), hub ids and other values as they are."""
    return model_source(value) if name in _PATH_OPTIONS and isinstance(value, str) else value


def claim_folder(out: Path, settings: dict, records: list[dict]) -> str | None:
    """Check `out` and record this run's settings and manifest in it, as one step under an exclusive lock
    on `out/.generate.lock`: of runs started together with different settings, only the first is accepted
    (the others see its settings). Returns why this run is refused, or None."""
    Path(out).mkdir(parents=True, exist_ok=True)
    with open(Path(out) / LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        try:
            problem = check_same_settings(out, settings, records)
        except ValueError as error:  # a damaged settings.json or prompts.jsonl: named, never overwritten
            problem = f"{out} cannot be resumed: {error}"
        if problem is None:
            write_manifest(out, records)
            write_json(Path(out) / SETTINGS, settings)
    return problem


def write_manifest(out: Path, records: list[dict]) -> Path:
    """`prompts.jsonl` from `manifest_records` (evaluate.py reads the prompts from it)."""
    return write_text(Path(out) / MANIFEST, "".join(json.dumps(record) + "\n" for record in records))


def save_image(image: Image.Image, path: Path, entry: PromptEntry, seed: int, scale: float) -> None:
    """Save atomically (an interrupted run leaves no truncated PNG to skip later), with the prompt, seed
    and λ in the PNG's text fields."""
    info = PngInfo()
    info.add_text("prompt", entry.prompt)
    info.add_text("seed", str(seed))
    info.add_text("pladis_scale", f"{scale:g}")
    write_image(path, image, pnginfo=info)


def images_to_make(out: Path, entries: list[PromptEntry], scale: float) -> list[PromptEntry]:
    """The prompts whose image at λ = `scale` is missing or damaged (a damaged one is named and made again)."""
    todo = []
    for entry in entries:
        path = image_path(out, entry.index, scale)
        if path.exists() and (damage := png_damage(path)):
            print(f"{path} is damaged ({damage}): generating it again", flush=True)
        elif path.exists():
            continue
        todo.append(entry)
    return todo


def batches(entries: list[PromptEntry], batch_size: int) -> list[list[PromptEntry]]:
    """Consecutive batches of prompts sharing one negative prompt (so batching never changes what a
    prompt is conditioned on)."""
    result = []
    for _, group in groupby(entries, key=lambda entry: entry.negative_prompt):
        group = list(group)
        result += [group[start : start + batch_size] for start in range(0, len(group), batch_size)]
    return result


def main(argv: list[str] | None = None) -> list[Path]:
    """Generate this process's share of the missing images; return the paths it wrote."""
    args = parse_args(argv)
    import torch  # torch, accelerate and diffusers load once the options are known to be good
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    from scripts.cli.loading import call_options, image_size, load_pipeline, seeded_generator

    entries = read_prompts(args.prompts)
    state = PartialState(cpu=runs_on_cpu(args))
    if args.device is not None and state.num_processes > 1 and not str(args.device).startswith("cpu"):
        raise SystemExit("leave --device out under `accelerate launch`: each process uses its own device")
    # accelerate names CPU processes' device `cpu:0`; diffusers computes differently on `cpu:0` than on `cpu`
    device = args.device or (torch.device("cpu") if state.device.type == "cpu" else state.device)
    if state.num_processes == 1:
        args.device = str(device)  # recorded as it ran (not null); under a launcher each process picks its own
    settings = run_settings(
        "scripts.generate",
        args,
        argv,
        device=str(device),
        num_processes=state.num_processes,
        folders={f"{scale:g}": str(scale_folder(args.out, scale)) for scale in args.scales},
    )
    records = manifest_records(entries, args.seed)
    problem = claim_folder(args.out, settings, records) if state.is_main_process else None
    problem = broadcast_object_list([problem])[0]  # every process stops, or none
    if problem is not None:
        raise SystemExit(problem)
    written: list[Path] = []
    with state.split_between_processes(entries) as share:
        jobs = {scale: images_to_make(args.out, share, scale) for scale in args.scales}
        total = sum(len(todo) for todo in jobs.values())
        if total:
            pipe = load_pipeline(args, device)
            height, width = image_size(pipe, args)
            options = call_options(pipe, args, height, width)
            options.pop("negative_prompt", None)
            bar = tqdm(total=total, desc="generate", unit="image", disable=not state.is_local_main_process)
            for scale, todo in jobs.items():
                for batch in batches(todo, args.batch_size):
                    seeds = [prompt_seed(entry, args.seed) for entry in batch]
                    negative = batch[0].negative_prompt  # an explicit "" is kept, not replaced
                    negative = args.negative_prompt if negative is None else negative
                    if negative is not None:
                        options["negative_prompt"] = [negative] * len(batch)
                    result = pipe(
                        [entry.prompt for entry in batch],
                        generator=[seeded_generator(s) for s in seeds],
                        pladis_scale=scale,
                        **options,
                    )
                    options.pop("negative_prompt", None)
                    for entry, seed, image in zip(batch, seeds, result.images, strict=True):
                        path = image_path(args.out, entry.index, scale)
                        save_image(image, path, entry, seed, scale)
                        written.append(path)
                    bar.update(len(batch))
            bar.close()
        skipped = len(share) * len(args.scales) - total
    print(
        f"process {state.process_index}/{state.num_processes}: wrote {counted(len(written), 'image')}, "
        f"{skipped} already there ({len(share)} of {len(entries)} prompts)",
        flush=True,
    )
    state.wait_for_everyone()
    return written


if __name__ == "__main__":
    main()
