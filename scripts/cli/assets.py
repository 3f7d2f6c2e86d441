"""Where things are: the repository, its `asset/` folder and every tiny or toy pipeline in it, named once.

Also the defaults that follow from a model being one of those assets (few steps, small images), and
the rule that tells a local path from a hub id.
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
ASSET_DIR = REPO_ROOT / "asset"

TINY_SDXL = ASSET_DIR / "tiny-sdxl"
TINY_SDXL_LORA = ASSET_DIR / "tiny-sdxl-lora" / "pytorch_lora_weights.safetensors"
TINY_SDXL_CONTROLNET = ASSET_DIR / "tiny-sdxl-controlnet"  # the tiny SDXL + a ControlNet (in controlnet/)
TINY_DPT = ASSET_DIR / "tiny-dpt"  # DPTForDepthEstimation + DPTImageProcessor, like Intel/dpt-hybrid-midas
TINY_CONTROL_IMAGE = ASSET_DIR / "tiny-control-image.png"  # 64×64 input picture for ControlNet examples
TINY_FLUX_SCHNELL = ASSET_DIR / "tiny-flux-schnell"  # no guidance embedding, like FLUX.1-schnell
TINY_FLUX_DEV = ASSET_DIR / "tiny-flux-dev"  # guidance embedding, like FLUX.1-dev
TINY_FLUX_LORA = ASSET_DIR / "tiny-flux-lora" / "pytorch_lora_weights.safetensors"
TINY_STEPS = 2  # the tiny assets are random weights: two steps show the plumbing in a second
TINY_SIZE = 64  # their default image height and width

TOY_MODEL = ASSET_DIR / "toy-sdxl"  # trained by scripts/toy/train.py: compare's and attention_maps' default
TOY_PROMPT = "a red circle on the left and a blue square on the right"
TOY_STEPS = 20  # as in the toy's evaluation (scripts/toy/evaluate.py)


def repository_relative(path: Path) -> str:
    """`path` inside this repository as written from its root (`asset/tiny-sdxl`): how defaults are recorded,
    so settings files name no folder of the machine that wrote them."""
    return Path(path).resolve().relative_to(REPO_ROOT.resolve()).as_posix()


def model_source(model: str) -> str:
    """A local path made absolute (relative to the working folder, else to the repository), else unchanged (a hub
    id)."""
    for candidate in (Path(model), REPO_ROOT / model):
        if candidate.exists():
            return str(candidate.resolve())
    return model


def looks_like_path(value: str) -> bool:
    """Hub ids are `name` or `owner/name`; anything absolute, relative-dotted or deeper is a path."""
    return value.startswith(("/", ".", "~")) or value.count("/") > 1 or "\\" in value


def is_toy_model(model: str) -> bool:
    """True when `model` names the trained toy pipeline (`asset/toy-sdxl`), however it is spelt."""
    return Path(model_source(str(model))).resolve() == TOY_MODEL.resolve()


def is_tiny_asset(model: str) -> bool:
    """True for the random-weight pipelines in `asset/` (they get few steps and 64×64 by default); the
    trained toy is not one: it gets its pipeline's usual steps and its own 32×32 resolution."""
    source = Path(model_source(model))
    if not source.exists() or is_toy_model(model):
        return False
    return ASSET_DIR.resolve() in source.resolve().parents
