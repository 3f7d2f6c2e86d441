"""What a run leaves behind: the settings that reproduce it (arguments, versions, commit, device) and the
one atomic writer every script writes its JSON, text, images and folders through.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from .assets import REPO_ROOT, model_source, repository_relative
from .entry_points import invoked_command

PACKAGES = ("torch", "diffusers", "transformers", "accelerate", "peft", "entmax", "safetensors", "numpy", "pillow")


def write_atomically(path: Path, write: Callable[[Path], Any], *, folder: bool = False) -> Path:
    """Have `write` fill a temporary sibling of `path` (a file with the same suffix, or with `folder` a
    folder), then rename it into place, so a reader or a kill never sees half of it; returns `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if folder:
        staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    else:
        staging = path.with_name(f".{path.stem}.{os.getpid()}.partial{path.suffix}")
    try:
        write(staging)
        if folder and path.exists():
            shutil.rmtree(path)
        os.replace(staging, path)
    except BaseException:
        if folder:
            shutil.rmtree(staging, ignore_errors=True)
        else:
            staging.unlink(missing_ok=True)
        raise
    return path


def write_text(path: Path, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically."""
    return write_atomically(path, lambda partial: partial.write_text(text, encoding="utf-8"))


def write_json(path: Path, value: Any) -> Path:
    """Write `value` as indented JSON to `path` atomically."""
    return write_text(path, json.dumps(value, indent=2) + "\n")


def write_image(path: Path, image: Image.Image, **save_options: Any) -> Path:
    """Save `image` to `path` atomically, in the format its extension names (`save_options` go to PIL)."""
    return write_atomically(path, lambda partial: image.save(partial, **save_options))


def package_versions() -> dict[str, str]:
    """Versions of Python and of the packages that decide the pixels."""
    versions = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def repository_commit() -> str | None:
    """The checked-out commit of this repository, or None outside a git checkout."""
    try:
        result = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return (result.stdout.strip() or None) if result.returncode == 0 else None


def _json_value(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_json_value(item) for item in value]
    return value


def recorded_path(path: str) -> str:
    """A path inside this repository as it is relative to the repository root (the same on every checkout);
    other paths and hub ids unchanged."""
    candidate = Path(path)
    if candidate.is_absolute() and REPO_ROOT.resolve() in candidate.resolve().parents:
        return repository_relative(candidate)
    return path


def run_settings(module: str, args: argparse.Namespace, argv: list[str] | None, **extra: Any) -> dict[str, Any]:
    """Everything that reproduces a run of `python -m <module>`: the resolved arguments, the seed, package
    versions, commit, device.

    `argv` is the command line as given (None: `sys.argv[1:]`), recorded after the command that ran it (the
    console command, e.g. `pladis-compare`, or `python -m <module>`); `arguments` holds every option after
    defaults were resolved, which is what `--settings` reads back.
    """
    import torch

    from .loading import default_device

    arguments = {name: _json_value(value) for name, value in sorted(vars(args).items()) if name != "settings"}
    settings = {
        "script": module,
        "command": [*invoked_command(module), *(sys.argv[1:] if argv is None else argv)],
        "arguments": arguments,
        "seed": getattr(args, "seed", None),
        "model_source": recorded_path(model_source(args.model)) if getattr(args, "model", None) else None,
        "versions": package_versions(),
        "repository_commit": repository_commit(),
        "device": str(getattr(args, "device", None) or default_device()),
        "torch_threads": torch.get_num_threads(),  # CPU sums depend on it: bit-identical reruns need the same
        "rerun": f"{' '.join(invoked_command(module))} --settings <this file>",
    }
    settings.update(extra)
    return settings


def read_text_file(path: Path) -> str:
    """The UTF-8 text of `path` (a byte-order mark, as Windows editors write, dropped), or a ValueError naming the
    file and the problem (missing, unreadable, not UTF-8 with the line of the first bad byte)."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise ValueError(f"{path}: cannot be read ({error.strerror or error})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ValueError(
            f"{path}, line {line}: not UTF-8 text (byte {data[error.start]:#04x}); save the file as UTF-8"
        ) from None


def read_settings(path: Path) -> dict[str, Any]:
    """A settings JSON written by `write_json(path, run_settings(...))`, with a clear error (file, line, problem) when
    it is not one."""
    try:
        settings = json.loads(read_text_file(path))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}, line {error.lineno} column {error.colno}: not valid JSON ({error.msg})") from None
    if not isinstance(settings, dict) or not isinstance(settings.get("arguments"), dict):
        raise ValueError(f"{path} is not a settings file written by the PLADIS scripts (no 'arguments')")
    return settings
