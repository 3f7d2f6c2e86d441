"""Score folders of generated images against their prompts: CLIPScore, FID to a reference folder, ImageReward,
PickScore, and the toy scorer's accuracies when the prompts are the toy model's captions.

It prints one table row per folder (e.g. without and with PLADIS, as in the paper's tables); a metric whose
model or weights are not available (not downloaded, HF_HUB_OFFLINE=1, a package missing) reads "n/a" with the
reason, and FID is named after the features it used. Folders `generate` made on the trained toy
(`asset/toy-sdxl`, its default model) from toy captions are scored offline by the toy scorer
(`scripts/toy/scorer.py`: colour, shape, object, image accuracy). `--toy` instead generates and scores the toy's
whole evaluation grid (`scripts/toy/evaluate.py`; every option after `--toy` is that script's).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from scripts.cli import checks
from scripts.cli.assets import model_source
from scripts.cli.parsers import command_parser
from scripts.cli.prompts import IMAGE_NAME, MANIFEST, PromptEntry, folder_label, read_prompts
from scripts.cli.records import write_json

REFERENCE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
INCEPTION_SIZE = 299

if TYPE_CHECKING:
    import torch

FeatureExtractor = Callable[[Sequence[Image.Image]], np.ndarray]


# ---------------------------------------------------------------- FID


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (rows = samples):
    `‖μa − μb‖² + Tr(Σa + Σb − 2·(Σa·Σb)^½)`, the FID formula; needs at least 2 samples per set."""
    from scipy import linalg

    features_a, features_b = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
    if min(len(features_a), len(features_b)) < 2:
        raise ValueError("FID needs at least 2 images in each set")
    mean_a, mean_b = features_a.mean(axis=0), features_b.mean(axis=0)
    cov_a, cov_b = np.atleast_2d(np.cov(features_a, rowvar=False)), np.atleast_2d(np.cov(features_b, rowvar=False))
    covmean = linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(covmean).all():  # singular product: offset the diagonals, as pytorch-fid does
        offset = np.eye(cov_a.shape[0]) * 1e-6
        covmean = linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    covmean = np.real(covmean)
    diff = mean_a - mean_b
    return float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(covmean))


def inception_features(weights: Path, device: str) -> FeatureExtractor:
    """Pool features (2048) of torchvision's Inception-v3 loaded from a local state-dict file."""
    import torch
    from torchvision.models import inception_v3

    # transform_input=True as torchvision sets for its ImageNet weights (they expect [-1, 1] inputs)
    model = inception_v3(weights=None, aux_logits=True, init_weights=False, transform_input=True)
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    model.fc = torch.nn.Identity()
    model = model.eval().to(device)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def extract(images: Sequence[Image.Image]) -> np.ndarray:
        pixels = np.stack(
            [
                np.asarray(image.convert("RGB").resize((INCEPTION_SIZE, INCEPTION_SIZE), Image.BILINEAR))
                for image in images
            ]
        )
        batch = (torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0 - mean) / std
        with torch.no_grad():
            return model(batch.to(device)).float().cpu().numpy()

    return extract


# ---------------------------------------------------------------- CLIP-based scores


def _normalised_embedding(output: object) -> torch.Tensor:
    """The unit-length float embeddings of a `get_*_features` result: a tensor (transformers 4) or an output
    whose pooler holds the projection (5)."""
    import torch

    features = output if isinstance(output, torch.Tensor) else output.pooler_output
    return torch.nn.functional.normalize(features.float(), dim=-1)


@dataclass
class ClipModel:
    """A CLIP model and its processor (from `processor_name`, default the model's own folder or hub id),
    giving normalised embeddings."""

    name: str
    device: str
    processor_name: str | None = None
    model: object = field(init=False)
    processor: object = field(init=False)

    def __post_init__(self) -> None:
        from transformers import CLIPModel, CLIPProcessor

        self.model = CLIPModel.from_pretrained(model_source(self.name), use_safetensors=True).eval().to(self.device)
        self.processor = CLIPProcessor.from_pretrained(model_source(self.processor_name or self.name))

    def image_embeddings(self, images: Sequence[Image.Image]) -> torch.Tensor:
        import torch

        inputs = self.processor(images=[image.convert("RGB") for image in images], return_tensors="pt")
        with torch.no_grad():
            return _normalised_embedding(
                self.model.get_image_features(pixel_values=inputs["pixel_values"].to(self.device))
            )

    def text_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        import torch

        inputs = self.processor(text=list(texts), padding=True, truncation=True, return_tensors="pt")
        inputs = {name: value.to(self.device) for name, value in inputs.items()}
        with torch.no_grad():
            return _normalised_embedding(self.model.get_text_features(**inputs))

    def cosines(self, images: Sequence[Image.Image], texts: Sequence[str]) -> torch.Tensor:
        """cos(image_i, text_i) for each pair."""
        return (self.image_embeddings(images) * self.text_embeddings(texts)).sum(dim=-1).cpu()

    def image_features(self, images: Sequence[Image.Image]) -> np.ndarray:
        return self.image_embeddings(images).cpu().numpy()


def clip_scores(clip: ClipModel, images: Sequence[Image.Image], prompts: Sequence[str]) -> list[float]:
    """CLIPScore per image: `100·max(cos(image, prompt), 0)` (torchmetrics' definition)."""
    return (100.0 * clip.cosines(images, prompts).clamp_min(0.0)).tolist()


def pick_scores(pick: ClipModel, images: Sequence[Image.Image], prompts: Sequence[str]) -> list[float]:
    """PickScore per image: `exp(logit_scale)·cos(image, prompt)` with the PickScore CLIP model."""
    return (pick.model.logit_scale.exp().item() * pick.cosines(images, prompts)).tolist()


def image_reward_model(name: str, device: str) -> object:
    """An ImageReward model (package `image-reward`) from a checkpoint name or local file."""
    import ImageReward

    return ImageReward.load(name, device=device)


def image_reward_scores(model: object, images: Sequence[Image.Image], prompts: Sequence[str]) -> list[float]:
    scores = []
    for image, prompt in zip(images, prompts, strict=True):
        score = model.score(prompt, image)
        scores.append(float(score[0] if isinstance(score, (list, tuple)) else score))
    return scores


# ---------------------------------------------------------------- folders and prompts


def generated_images(folder: Path) -> dict[int, Path]:
    """`NNNNN.png` files of a generate.py folder, by prompt index."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no folder {folder}")
    found = {int(match.group(1)): path for path in folder.iterdir() if (match := IMAGE_NAME.match(path.name))}
    if not found:
        raise ValueError(f"{folder} has no images named like 00000.png (the names generate.py writes)")
    return dict(sorted(found.items()))


def reference_images(folder: Path) -> list[Path]:
    """Every image file of a reference folder (any names), sorted."""
    paths = sorted(path for path in Path(folder).iterdir() if path.suffix.lower() in REFERENCE_SUFFIXES)
    if not paths:
        raise ValueError(f"reference folder {folder} has no images")
    return paths


def prompts_for(folders: Sequence[Path], prompts: Path | None) -> list[PromptEntry]:
    """`--prompts`, else the `prompts.jsonl` generate.py wrote beside (or in) the first folder; a bad file
    stops the job with its name and line."""
    candidates = [prompts] if prompts is not None else [Path(folders[0]).parent / MANIFEST, Path(folders[0]) / MANIFEST]
    for candidate in candidates:
        if candidate.exists():
            try:
                return read_prompts(candidate)
            except ValueError as error:
                raise SystemExit(f"evaluate.py: {error}") from None
    if prompts is not None:
        raise SystemExit(f"evaluate.py: --prompts: no such file: {prompts}")
    raise SystemExit(f"no --prompts given and no {MANIFEST} next to {folders[0]}")


def image_prompt(path: Path) -> str | None:
    """The prompt a generated PNG carries in its `prompt` text field (generate.py writes it), or None; the
    file is verified on the way, so a truncated or broken image stops the job here, naming it."""
    try:
        with Image.open(path) as image:
            prompt = image.info.get("prompt")  # text chunks before the image data: read without decoding
            image.verify()
    except (OSError, SyntaxError, ValueError) as error:  # PIL reports broken PNG chunks as SyntaxError
        raise SystemExit(f"evaluate.py: {path} is not a readable image ({error}); regenerate or remove it") from None
    return prompt if isinstance(prompt, str) else None


def check_image_prompts(images: dict[Path, str]) -> None:
    """Refuse to score images against prompts they were not made from: each image's own `prompt` field must
    equal the prompt it is scored against (images without the field cannot be checked and are noted)."""
    mismatches, unchecked = [], 0
    for path, prompt in images.items():
        carried = image_prompt(path)
        if carried is None:
            unchecked += 1
        elif carried != prompt:
            mismatches.append(f"{path}: made from {carried!r}, scored against {prompt!r}")
    if mismatches:
        shown = "\n  ".join(mismatches[:5]) + (f"\n  ... and {len(mismatches) - 5} more" if len(mismatches) > 5 else "")
        raise SystemExit(
            f"evaluate.py: {len(mismatches)} images carry another prompt than the one they would be "
            f"scored against (wrong --prompts file, or folders of another prompt list):\n  {shown}"
        )
    if unchecked:
        print(
            f"note: {unchecked} images carry no prompt text field; their prompts could not be checked", file=sys.stderr
        )


def in_batches(items: Sequence, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def open_images(paths: Sequence[Path]) -> list[Image.Image]:
    """The images as RGB; an unreadable file stops the job, naming it."""
    images = []
    for path in paths:
        try:
            with Image.open(path) as image:
                images.append(image.convert("RGB"))
        except (OSError, SyntaxError, ValueError) as error:
            raise SystemExit(f"evaluate.py: {path} is not a readable image ({error})") from None
    return images


def features_of(paths: Sequence[Path], extract: FeatureExtractor, batch_size: int) -> np.ndarray:
    return np.concatenate([extract(open_images(batch)) for batch in in_batches(list(paths), batch_size)])


# ---------------------------------------------------------------- the job


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = command_parser(__doc__)
    parser.add_argument("folders", nargs="+", type=Path, help="generated folders, e.g. out/pladis_0 out/pladis_2")
    parser.add_argument(
        "--toy",
        action="store_true",
        help="generate and score the embedded toy model's evaluation grid instead (scripts/toy/evaluate.py, no "
        "folders): every option after --toy is that script's (see pladis-evaluate --toy --help)",
    )
    parser.add_argument(
        "--prompts",
        type=Path,
        default=None,
        help=f"prompt file (default: the {MANIFEST} generate.py wrote next to the folders)",
    )
    parser.add_argument("--labels", default=None, help="comma-separated row labels (default from folder names)")
    parser.add_argument("--reference", type=Path, default=None, help="reference images for FID (e.g. COCO val)")
    parser.add_argument(
        "--clip-model",
        default="openai/clip-vit-large-patch14",
        help="CLIP for CLIPScore: local folder or hub id (default ViT-L/14, as torchmetrics; "
        "'n/a' with the reason when it cannot load, e.g. offline and not downloaded)",
    )
    parser.add_argument(
        "--fid-features",
        choices=("inception", "clip"),
        default="inception",
        help="inception: torchvision Inception-v3 (needs --inception-weights); "
        "clip: the --clip-model image embeddings, reported as 'FID (CLIP features)'",
    )
    parser.add_argument(
        "--inception-weights", type=Path, default=None, help="local torchvision inception_v3 state dict (.pth) for FID"
    )
    parser.add_argument(
        "--imagereward-model", default=None, help="ImageReward checkpoint name or file (needs the image-reward package)"
    )
    parser.add_argument("--pickscore-model", default=None, help="PickScore CLIP model: local folder or hub id")
    parser.add_argument(
        "--pickscore-processor",
        default=None,
        help="its processor (default: the model's folder; PickScore_v1 uses laion/CLIP-ViT-H-14-laion2B-s32B-b79K)",
    )
    parser.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda when available)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if args.labels is not None:
        args.labels = [label.strip() for label in args.labels.split(",")]
        if len(args.labels) != len(args.folders):
            parser.error(f"--labels has {len(args.labels)} labels for {len(args.folders)} folders")
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.json is not None and (problem := checks.output_file_problem("--json", args.json, image=False)):
        parser.error(problem)
    for folder in args.folders:
        if not folder.is_dir():
            parser.error(f"no such folder: {folder} (give generate.py's folders, e.g. out/pladis_0 out/pladis_2)")
    for option, path, kind in (
        ("--prompts", args.prompts, "file"),
        ("--reference", args.reference, "folder"),
        ("--inception-weights", args.inception_weights, "file"),
    ):
        if path is not None and not (path.is_dir() if kind == "folder" else path.is_file()):
            parser.error(f"{option}: no such {kind}: {path}")
    if problem := checks.device_problem("--device", args.device):
        parser.error(problem)
    from scripts.cli.loading import default_device  # imports torch: only once the options parsed

    args.device = args.device or default_device()
    return args


def _mean(values: list[float]) -> float:
    return float(np.mean(values))


def loaded(what: str, name: str, load: Callable[[], object]) -> tuple[object | None, str]:
    """`load()` and its metric label, or None and "n/a (why)": not in the local cache with HF_HUB_OFFLINE=1, or
    the loader's own error, in one line."""
    if problem := checks.hub_offline_problem(what, name, "config.json"):
        return None, f"n/a ({problem})"
    try:
        return load(), ""
    except (OSError, ValueError, ImportError) as error:  # files, hub and packages: "not available here"
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return None, f"n/a ({what} {name} could not be loaded: {reason})"


TOY_METRICS = {
    "toy_colour": "toy scorer: share of the two objects with the prompted colour on the prompted side",
    "toy_shape": "toy scorer: share of the two objects with the prompted shape on the prompted side",
    "toy_object": "toy scorer: share of the two objects right in colour and shape",
    "toy_image": "toy scorer: share of images with both objects right (scripts/toy/scorer.py, no learned weights)",
}


def toy_scenes(prompts: Sequence[str], folders: Sequence[Path]) -> list | str | None:
    """The toy scenes the prompts ask for, when the toy scorer can read these folders: every prompt a two-object
    toy caption. Otherwise the reason (a string) when the folders look like a toy run (a prompt is a toy
    caption, or generate.py recorded the toy model), else None (the scorer does not apply)."""
    from scripts.toy.scorer import scene_of_caption

    scenes, problem = [], None
    for index, prompt in enumerate(prompts):
        try:
            scene = scene_of_caption(prompt)
        except ValueError:
            problem = problem or f"prompt {index} is not a toy caption: {prompt!r}"
            continue
        if scene.left is None or scene.right is None:
            problem = problem or f"prompt {index} names one object; the toy scorer reads two-object captions"
        scenes.append(scene)
    if problem is None:
        return scenes
    return f"n/a ({problem})" if scenes or _made_by_the_toy(folders) else None


def _made_by_the_toy(folders: Sequence[Path]) -> bool:
    """Whether generate.py recorded the trained toy as the model of these folders."""
    from scripts.cli.assets import is_toy_model
    from scripts.cli.prompts import SETTINGS
    from scripts.cli.records import read_settings

    for folder in folders:
        path = Path(folder).parent / SETTINGS
        try:
            model = read_settings(path)["arguments"].get("model") if path.exists() else None
        except ValueError:
            model = None
        if model and is_toy_model(model):
            return True
    return False


def toy_scores(scenes: Sequence, images: Sequence[Image.Image]) -> dict[str, list[float]]:
    """Per-image toy accuracies (`TOY_METRICS`) of `images` against the scenes their prompts asked for."""
    from scripts.toy.evaluate import score_images

    return {f"toy_{metric}": values for metric, values in score_images(list(images), list(scenes)).items()}


def evaluate(args: argparse.Namespace) -> dict:
    """Every metric for every folder, as {"metrics": {name: label or reason}, "rows": [...]}."""
    entries = {entry.index: entry.prompt for entry in prompts_for(args.folders, args.prompts)}
    images = [generated_images(folder) for folder in args.folders]
    shared = sorted(set.intersection(*(set(found) for found in images)) & set(entries))
    if not shared:
        raise SystemExit("the folders share no image index that has a prompt")
    for folder, found in zip(args.folders, images, strict=True):
        if len(found) != len(shared):
            print(
                f"note: {folder} has {len(found)} images; scoring the {len(shared)} all folders share", file=sys.stderr
            )
    prompts = [entries[index] for index in shared]
    check_image_prompts({found[index]: entries[index] for found in images for index in shared})
    labels = args.labels or [folder_label(folder) for folder in args.folders]
    rows = [
        {"label": label, "folder": str(folder), "images": len(shared)}
        for label, folder in zip(labels, args.folders, strict=True)
    ]

    # Each scorer maps (images, prompts) of a batch to {metric: per-image scores}.
    scorers: list[Callable[[list[Image.Image], list[str], list[int]], dict[str, list[float]]]] = []
    metrics: dict[str, str] = {}
    clip, why = loaded("--clip-model", args.clip_model, lambda: ClipModel(args.clip_model, args.device))
    metrics["clip_score"] = f"CLIPScore ({args.clip_model})" if clip is not None else why
    if clip is not None:
        scorers.append(lambda batch, texts, at: {"clip_score": clip_scores(clip, batch, texts)})

    if args.pickscore_model is None:
        metrics["pick_score"] = "n/a (no --pickscore-model given)"
    else:
        pick, why = loaded(
            "--pickscore-model",
            args.pickscore_model,
            lambda: ClipModel(args.pickscore_model, args.device, args.pickscore_processor),
        )
        metrics["pick_score"] = f"PickScore ({args.pickscore_model})" if pick is not None else why
        if pick is not None:
            scorers.append(lambda batch, texts, at: {"pick_score": pick_scores(pick, batch, texts)})

    if args.imagereward_model is None:
        metrics["image_reward"] = "n/a (no --imagereward-model given)"
    else:
        try:
            reward = image_reward_model(args.imagereward_model, args.device)
        except ImportError:
            metrics["image_reward"] = "n/a (the image-reward package is not installed: pip install image-reward)"
        except Exception as error:  # noqa: BLE001 - the package raises many kinds when weights are missing
            metrics["image_reward"] = f"n/a (ImageReward {args.imagereward_model} could not be loaded: {error})"
        else:
            metrics["image_reward"] = f"ImageReward ({args.imagereward_model})"
            scorers.append(lambda batch, texts, at: {"image_reward": image_reward_scores(reward, batch, texts)})

    scenes = toy_scenes(prompts, args.folders)
    if isinstance(scenes, str):
        metrics.update(dict.fromkeys(TOY_METRICS, scenes))
    elif scenes is not None:
        metrics.update(TOY_METRICS)
        scorers.append(lambda batch, texts, at: toy_scores([scenes[index] for index in at], batch))

    extract: FeatureExtractor | None = None
    if args.reference is None:
        metrics["fid"] = "n/a (no --reference folder)"
    elif args.fid_features == "clip":
        if clip is None:
            metrics["fid"] = f"n/a (FID on CLIP features needs the --clip-model: {metrics['clip_score'][5:-1]})"
        else:
            extract, metrics["fid"] = clip.image_features, f"FID (CLIP features, {args.clip_model})"
    elif args.inception_weights is None:
        metrics["fid"] = (
            "n/a (Inception weights unavailable: pass --inception-weights FILE, "
            "or --fid-features clip for an FID on CLIP features)"
        )
    else:
        extract = inception_features(args.inception_weights, args.device)
        metrics["fid"] = "FID (torchvision Inception-v3 pool features)"

    reference = None
    if extract is not None:
        reference = features_of(reference_images(args.reference), extract, args.batch_size)

    positions = list(range(len(shared)))
    with tqdm(total=len(args.folders) * len(shared), desc="evaluate", unit="image") as bar:
        for row, found in zip(rows, images, strict=True):
            paths = [found[index] for index in shared]
            scores: dict[str, list[float]] = {}
            features = []
            for batch_paths, batch_prompts, batch_positions in zip(
                in_batches(paths, args.batch_size),
                in_batches(prompts, args.batch_size),
                in_batches(positions, args.batch_size),
                strict=True,
            ):
                batch = open_images(batch_paths)
                for scorer in scorers:
                    for name, values in scorer(batch, batch_prompts, batch_positions).items():
                        scores.setdefault(name, []).extend(values)
                if extract is not None:
                    features.append(extract(batch))
                bar.update(len(batch))
            row.update({name: _mean(values) for name, values in scores.items()})
            if extract is not None:
                row["fid"] = frechet_distance(np.concatenate(features), reference)
    return {"metrics": metrics, "rows": rows, "reference": None if args.reference is None else str(args.reference)}


def _cell(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


COLUMNS = (
    ("fid", "FID ↓"),
    ("clip_score", "CLIPScore ↑"),
    ("image_reward", "ImageReward ↑"),
    ("pick_score", "PickScore ↑"),
    ("toy_colour", "toy colour ↑"),
    ("toy_shape", "toy shape ↑"),
    ("toy_object", "toy object ↑"),
    ("toy_image", "toy image ↑"),
)


def format_table(results: dict) -> str:
    """A Markdown table (FID ↓, CLIPScore ↑, ImageReward ↑, PickScore ↑, and the toy scorer's accuracies where
    they apply, per folder) and what each column is."""
    columns = [(name, title) for name, title in COLUMNS if name in results["metrics"]]
    lines = [
        "| | images | " + " | ".join(title for _, title in columns) + " |",
        "| --- | ---: | " + " | ".join("---:" for _ in columns) + " |",
    ]
    for row in results["rows"]:
        lines.append(
            f"| {row['label']} | {row['images']} | " + " | ".join(_cell(row.get(name)) for name, _ in columns) + " |"
        )
    lines.append("")
    lines += [f"{title.removesuffix(' ↑').removesuffix(' ↓')}: {results['metrics'][name]}" for name, title in columns]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    """Print the table (and write `--json`); return the results. `--toy [options]` runs the toy evaluation
    instead (`scripts/toy/evaluate.py`: generation and the toy scorer, no downloaded models), wherever it stands."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--toy" in argv:
        from scripts.toy.evaluate import main as toy_main

        return toy_main([item for item in argv if item != "--toy"])
    args = parse_args(argv)
    results = evaluate(args)
    print(format_table(results))
    if args.json is not None:
        write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
