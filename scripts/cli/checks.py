"""Checks the scripts run while parsing, so a bad option is a usage error before any model loads.

Each function returns a problem sentence (naming the option and what it accepts) or None; the callers
pass it to `parser.error`. Model-dependent checks read only config files (no weights), from a local
folder or the Hugging Face cache, and are skipped when the config is not on this machine.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from .assets import looks_like_path, model_source

COMMON_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tiff")
SDXL_SIZE_MULTIPLE = 8  # the SDXL pipelines' check_inputs refuse other sizes
FLUX_DEFAULT_SIZE_MULTIPLE = 16  # 2 × the FLUX VAE's scale factor 8 (latents are packed in 2×2 patches)
SEED_RANGE = (-(2**63), 2**64 - 1)  # what `torch.Generator.manual_seed` takes; others fail only at generation


def _absolute(path: Path) -> Path:
    return Path(os.path.abspath(Path(path).expanduser()))


def folder_problem(folder: Path) -> str | None:
    """Why files cannot be written in `folder` (created if missing), or None: the nearest existing folder on
    its path must be a folder we can create files in (tried with a nameless temporary file)."""
    existing = _absolute(folder)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, so the folder {folder} cannot be created"
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        return f"cannot write in {existing} ({error.strerror or error})"
    return None


def output_file_problem(option: str, path: Path, *, image: bool = True, companions: Sequence[str] = ()) -> str | None:
    """Why `path` cannot be written as the output of `option`, or None.

    With `image`, its extension must be one PIL can write; it must not be an existing folder (nor may the
    `companions`, e.g. `.json` for the settings written next to it) and its folder must be writable.
    """
    path = Path(path)
    for candidate in (path, *(path.with_suffix(suffix) for suffix in companions)):
        if candidate.is_dir():
            example = path / ("grid.png" if image else "results.json")
            return f"{option} {path}: {candidate} is an existing folder; give a file name such as {example}"
    if image and not _writes_rgb(path.suffix):
        return (
            f"{option} {path}: the name needs an image extension PIL can write an RGB image as "
            f"(e.g. {', '.join(COMMON_IMAGE_EXTENSIONS)})"
        )
    problem = folder_problem(path.parent)
    return None if problem is None else f"{option} {path}: {problem}"


def _writes_rgb(suffix: str) -> bool:
    """True when PIL saves an RGB image under this extension (tried on a 1×1 image in memory: some formats
    PIL writes, such as .xbm, take other modes only)."""
    Image.init()
    image_format = Image.registered_extensions().get(suffix.lower())
    if image_format is None or image_format not in Image.SAVE:
        return False
    try:
        Image.new("RGB", (1, 1)).save(io.BytesIO(), format=image_format)
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return True


def output_folder_problem(option: str, folder: Path) -> str | None:
    """Why `folder` cannot be an output folder of `option` (an existing file, or not writable), or None."""
    if Path(folder).exists() and not Path(folder).is_dir():
        return f"{option} {folder}: is an existing file; give a folder"
    problem = folder_problem(folder)
    return None if problem is None else f"{option} {folder}: {problem}"


def seed_problem(seed: object) -> str | None:
    """Why `seed` cannot seed a generator (not an integer, or outside `SEED_RANGE`), or None."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        return f"non-integer seed {seed!r}"
    if not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        return f"seed {seed} is outside [{SEED_RANGE[0]}, {SEED_RANGE[1]}], the seeds a torch generator takes"
    return None


def lora_problem(option: str, value: str | Path) -> str | None:
    """LoRA weights are loaded from safetensors only (never pickles): the name must end in `.safetensors`, and a
    local file must be one (a pickle renamed `.safetensors` is named, not handed to the loader)."""
    if not str(value).endswith(".safetensors"):
        return f"{option} {value}: only .safetensors LoRA files are loaded (pickled .bin/.pt/.ckpt files are refused)"
    if Path(value).is_file() and (problem := safetensors_problem(Path(value))):
        return f"{option} {value}: {problem}"
    return None


SAFETENSORS_MAX_HEADER = 100 * 2**20  # the safetensors format's own limit on the header size


def safetensors_problem(path: Path) -> str | None:
    """Why `path` is not a complete safetensors file (no safetensors header, e.g. a pickle renamed; or fewer
    bytes than its header describes, a file cut short), or None. Reads the header only."""
    try:
        with open(path, "rb") as file:
            prefix = file.read(8)
            size = file.seek(0, 2)
            header_size = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
            if not 2 <= header_size <= min(SAFETENSORS_MAX_HEADER, size - 8):
                return "not a safetensors file (no safetensors header: a pickle?)"
            file.seek(8)
            header = json.loads(file.read(header_size))
    except OSError as error:
        return f"unreadable ({error.strerror or error})"
    except (UnicodeDecodeError, json.JSONDecodeError):
        return "not a safetensors file (its header is not JSON: a pickle?)"
    ends = [entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"]
    expected = 8 + header_size + max(ends, default=0)
    if size != expected:
        return f"cut short or damaged: its header describes {expected} bytes, the file has {size}"
    return None


def json_file_problem(path: Path) -> str | None:
    """Why `path` is not a JSON file (e.g. cut short), or None."""
    try:
        json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except OSError as error:
        return f"unreadable ({error.strerror or error})"
    except UnicodeDecodeError:
        return "not UTF-8 text"
    except json.JSONDecodeError as error:
        return f"not valid JSON (line {error.lineno} column {error.colno}: {error.msg}; cut short?)"
    return None


def component_files_problem(
    model: str | Path, option: str = "--model", *, source: str | Path | None = None
) -> str | None:
    """Why a local pipeline folder (or a single-model folder such as a ControlNet; read from `source`, its
    resolved path, when given) cannot load, naming the component folder or file: a component its
    `model_index.json` names without its folder, a `.safetensors` file cut short or not safetensors, a `.json`
    file (configs, tokenizers) that does not parse. None when all is there, and for hub ids."""
    folder = Path(source or model)
    if not folder.is_dir():
        return None
    index_path = folder / "model_index.json"
    components = ["."]
    if index_path.is_file():
        if problem := json_file_problem(index_path):
            return f"{option} {model}: model_index.json is {problem}"
        components = sorted(_components(json.loads(index_path.read_text(encoding="utf-8-sig"))))
    for component in components:
        part = folder / component
        if not part.is_dir():
            return f"{option} {model}: the component folder {component}/ is missing (model_index.json names it)"
        for path in sorted(part.iterdir()):
            checker = {".safetensors": safetensors_problem, ".json": json_file_problem}.get(path.suffix)
            if checker is not None and (problem := checker(path)):
                return f"{option} {model}: {path.relative_to(folder).as_posix()} is {problem}"
    return None


def _model_config(model: str, subfolder: str, config_class: type) -> dict | None:
    """`subfolder/config.json` of a model folder or a cached hub model, or None when not on this machine."""
    try:
        with warnings.catch_warnings():  # the hub client warns about deprecated arguments diffusers passes
            warnings.simplefilter("ignore")
            return config_class.load_config(model, subfolder=subfolder, local_files_only=True)
    except (OSError, ValueError):
        return None


def model_index(model: str) -> dict | None:
    """The `model_index.json` of a pipeline folder or a cached hub model, or None when not on this machine."""
    from diffusers import DiffusionPipeline

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return DiffusionPipeline.load_config(model, local_files_only=True)
    except (OSError, ValueError):
        return None


def _components(index: dict) -> set[str]:
    """The components a `model_index.json` holds (entries like `["diffusers", "UNet2DConditionModel"]`)."""
    return {name for name, value in index.items() if isinstance(value, list) and value and value[0] is not None}


def _required_components(cls: type) -> set[str]:
    expected, _ = cls._get_signature_keys(cls)
    return set(expected) - set(getattr(cls, "_optional_components", ()))


def components_problem(
    pipeline: str, model: str, given: Sequence[str] = (), *, source: str | None = None, suggest: bool = True
) -> str | None:
    """Why the folder or cached hub model `model` (read from `source`, its resolved path, when given) cannot load
    as `--pipeline pipeline` (a component that pipeline needs is not in its `model_index.json`, nor `given` by an
    option such as `--controlnet`), naming the missing component and the option (with `suggest`, the `--pipeline`)
    to use; None when it can, or when the index is not on this machine."""
    from .registry import PIPELINES, pipeline_class

    index = model_index(source or model)
    if index is None or pipeline == "auto":
        return None
    present = _components(index) | set(given)
    cls = pipeline_class(pipeline)
    missing = sorted(_required_components(cls) - present)
    if not missing:
        return None
    what = f"--model {model} (a {index.get('_class_name', 'pipeline')}) has no {', '.join(missing)}"
    needs = f"which {cls.__name__} (--pipeline {pipeline}) needs" if suggest else f"which {cls.__name__} needs"
    if missing == ["controlnet"]:
        return f"{what}, {needs}: give the ControlNet with --controlnet FOLDER_OR_HUB_ID"
    if not suggest:
        return f"{what}, {needs}: give a model with those components"
    fitting = [
        name
        for name in PIPELINES
        if name not in (pipeline, "auto") and not _required_components(pipeline_class(name)) - present
    ]
    return f"{what}, {needs}; it loads with --pipeline {' or '.join([*fitting, 'auto'])}"


def freeu_problem(pipeline: str, model: str) -> str | None:
    """Why `--freeu` cannot apply (the pipeline, or for `auto` the model's stock class, is not a U-Net pipeline
    with `enable_freeu`), or None; for `auto` without a local `model_index.json`, left to loading."""
    import diffusers

    from .registry import pipeline_class

    cls = pipeline_class(pipeline)
    if pipeline == "auto":
        index = model_index(model)
        cls = getattr(diffusers, str((index or {}).get("_class_name")), None)
        if cls is None:
            return None
    if hasattr(cls, "enable_freeu"):
        return None
    return f"--freeu needs a U-Net pipeline (SDXL, SDXL SEG/PAG, ControlNet); {cls.__name__} has no FreeU"


def image_file_problem(option: str, path: str | Path, *, source: str | Path | None = None) -> str | None:
    """Why `path` (read from `source`, its resolved path, when given) is not an image PIL can open (checked
    without decoding the pixels), or None."""
    try:
        with Image.open(source or path) as image:
            image.verify()
    except (OSError, SyntaxError, ValueError) as error:  # UnidentifiedImageError is an OSError
        return f"{option} {path}: not an image file PIL can read ({error})"
    return None


def flux_is_timestep_distilled(model: str) -> bool | None:
    """Whether a FLUX model is timestep-distilled like FLUX.1-schnell (its transformer has no guidance
    embedding, so it is meant for ~4 steps), read from the transformer config; None when the config is
    not on this machine (a hub model not downloaded yet)."""
    from diffusers import FluxTransformer2DModel

    config = _model_config(model, "transformer", FluxTransformer2DModel)
    return None if config is None else not config.get("guidance_embeds", False)


def size_multiple(model: str, flux: bool) -> int:
    """What `--height` / `--width` must be a multiple of: 8 for the SDXL pipelines, 2 × the VAE scale factor
    for FLUX (read from the VAE config when available; 16 for the real FLUX VAE)."""
    if not flux:
        return SDXL_SIZE_MULTIPLE
    from diffusers import AutoencoderKL

    config = _model_config(model, "vae", AutoencoderKL)
    if config is None or "block_out_channels" not in config:
        return FLUX_DEFAULT_SIZE_MULTIPLE
    return 2 * 2 ** (len(config["block_out_channels"]) - 1)


def size_problem(height: int | None, width: int | None, multiple: int) -> str | None:
    """Why the image size is refused (below 8, or not a multiple of `multiple`), or None."""
    for option, value in (("--height", height), ("--width", width)):
        if value is None:
            continue
        if value < 8:
            return f"{option} must be >= 8, got {value}"
        if value % multiple:
            below, above = value // multiple * multiple, (value // multiple + 1) * multiple
            return (
                f"{option} must be a multiple of {multiple} for this pipeline and model, got {value} "
                f"(e.g. {max(below, multiple)} or {above})"
            )
    return None


def unet_self_attention_names(model: str) -> list[str] | None:
    """Names of the U-Net's self-attention layers (what PAG/SEG layer ids match), from its config alone: the
    U-Net is built on the meta device (no weights, no memory). None when the config is not on this machine."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    from pipeline.guidance import self_attention_layer_names

    config = _model_config(model, "unet", UNet2DConditionModel)
    if config is None:
        return None
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(config)
    return self_attention_layer_names(unet)


def layer_ids_problem(option: str, layer_ids: Sequence[str] | None, layer_names: Sequence[str] | None) -> str | None:
    """Why `layer_ids` (PAG/SEG layer ids) match no self-attention layer of the model, or None; the ids are
    checked by the pipelines' own rule. `layer_names` None (config not available): left to the pipeline."""
    if layer_ids is None or layer_names is None:
        return None
    from attention.validation import check_applied_layers

    try:
        check_applied_layers(option, list(layer_ids), layer_names)
    except (TypeError, ValueError) as error:
        return str(error)
    return None


def _denoiser_class_and_folder(model: str) -> tuple[type, str] | None:
    """The denoiser class and subfolder a pipeline folder's `model_index.json` names (its `unet` or `transformer`),
    or None when the index is not on this machine or names neither."""
    import diffusers
    from diffusers import DiffusionPipeline

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            index = DiffusionPipeline.load_config(model, local_files_only=True)
    except (OSError, ValueError):
        return None
    for folder in ("unet", "transformer"):
        entry = index.get(folder)
        if (
            isinstance(entry, (list, tuple))
            and len(entry) == 2
            and isinstance(getattr(diffusers, entry[1], None), type)
        ):
            return getattr(diffusers, entry[1]), folder
    return None


def text_attention_names(model: str) -> list[str] | None:
    """Names of the denoiser's text-attention layers (what `--pladis-layers` ids match, single-stream blocks
    included), from its config alone on the meta device. None when the config is not on this machine."""
    from accelerate import init_empty_weights

    from attention.integration.diffusers_families import family_of
    from attention.integration.install import text_attention_candidates

    found = _denoiser_class_and_folder(model)
    if found is None:
        return None
    cls, folder = found
    config = _model_config(model, folder, cls)
    if config is None:
        return None
    with init_empty_weights():
        denoiser = cls.from_config(config)
    return list(text_attention_candidates(denoiser, family_of(denoiser)))


def pladis_layers_problem(
    option: str, layer_ids: Sequence[str] | None, layer_names: Sequence[str] | None
) -> str | None:
    """Why `layer_ids` (`--pladis-layers`) name no text-attention layer of the model, or None; `layer_names`
    None (config not available): left to apply_pladis."""
    if layer_ids is None or layer_names is None:
        return None
    from attention.integration.install import PLADIS_LAYER_EXAMPLES
    from attention.validation import layers_named

    try:
        layers_named(option, list(layer_ids), layer_names, "text-attention", PLADIS_LAYER_EXAMPLES)
    except (TypeError, ValueError) as error:
        return str(error)
    return None


def hub_offline_problem(
    option: str, value: str | None, filename: str = "model_index.json", hint: str = ""
) -> str | None:
    """Why the hub id `value` cannot be used in offline mode (HF_HUB_OFFLINE=1): its `filename` is not in the
    local Hugging Face cache, so loading would fail once the work began. None for local paths and URLs, for
    cached ids and when downloads are allowed. `hint` names what else would work (e.g. `, or run with --tiny`)."""
    if value is None or "://" in str(value) or looks_local(str(value)):
        return None
    return hub_file_offline_problem(option, str(value), filename, hint)


def hub_file_offline_problem(option: str, repo_id: str, filename: str, hint: str = "", shown: str = "") -> str | None:
    """`hub_offline_problem` for one file of a hub repository (e.g. a LoRA `<owner>/<repo>/<file>`, `shown`)."""
    from huggingface_hub import constants, try_to_load_from_cache

    if not constants.is_offline_mode() or isinstance(try_to_load_from_cache(repo_id, filename), str):
        return None
    return (
        f"{option} {shown or repo_id}: not in the local Hugging Face cache, and HF_HUB_OFFLINE=1 forbids "
        f"downloading it; download it once online (hf download {repo_id}), give a local "
        f"{'file' if shown else 'folder'}{hint}, or unset HF_HUB_OFFLINE"
    )


def url_offline_problem(option: str, value: str | None) -> str | None:
    """Why a URL cannot be fetched: HF_HUB_OFFLINE=1 says this machine works offline (give a local file)."""
    if value is None or "://" not in str(value):
        return None
    from huggingface_hub import constants

    if not constants.is_offline_mode():
        return None
    return f"{option} {value}: a URL cannot be fetched offline (HF_HUB_OFFLINE=1); give a local file"


def looks_local(value: str) -> bool:
    """True for a path that exists (relative to the working folder or the repository) or is spelt as one."""
    return looks_like_path(value) or Path(model_source(value)).expanduser().exists()


def device_problem(option: str, device: str | None) -> str | None:
    """Why `device` cannot run here: a CUDA device where torch sees no CUDA GPU (a CPU-only machine or torch
    build), or a GPU index beyond those present. Imports torch."""
    if device is None or not str(device).startswith("cuda"):
        return None
    import torch

    if not torch.cuda.is_available():
        return (
            f"{option} {device}: torch sees no CUDA GPU on this machine (torch.cuda.is_available() is False, "
            f"torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}); use --device cpu or leave "
            f"--device out"
        )
    index = str(device).partition(":")[2]
    if index.isdigit() and int(index) >= torch.cuda.device_count():
        return f"{option} {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s), numbered from 0"
    return None


def package_problem(option: str, package: str, extra: str) -> str | None:
    """Why `option` cannot work: the Python package `package` is not installed (it comes with the project's
    `extra`)."""
    import importlib.util

    if importlib.util.find_spec(package) is not None:
        return None
    return f"{option} needs the {package} package, which is not installed: pip install -e .[{extra}]"
