"""Prompt files and the folder layout `generate` writes and `evaluate` reads: one subfolder per λ
(`pladis_0`, `pladis_2`, ...), one `NNNNN.png` per prompt index, and the prompts manifest beside them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from .records import read_text_file

MANIFEST = "prompts.jsonl"  # the prompts with their resolved seeds, in index order (generate writes, evaluate reads)
SETTINGS = "settings.json"  # the run settings of a generate folder
IMAGE_NAME = re.compile(r"^(\d+)\.png$")  # a generated image's name: its prompt index
SCALE_FOLDER = re.compile(r"pladis_([0-9.]+)")


def scale_folder(out: Path, scale: float) -> Path:
    """`out/pladis_0` for λ = 0 (the baseline), `out/pladis_2`, `out/pladis_1.5`, ..."""
    return Path(out) / f"pladis_{scale:g}"


def image_path(out: Path, index: int, scale: float) -> Path:
    """The image of prompt `index` at λ = `scale`: named by both, so resuming works image by image."""
    return scale_folder(out, scale) / f"{index:05d}.png"


def folder_label(folder: Path) -> str:
    """`pladis_0` → "without PLADIS", `pladis_2` → "PLADIS 2" (the names of `scale_folder`), else the folder name."""
    match = SCALE_FOLDER.fullmatch(Path(folder).name)
    if match is None:
        return Path(folder).name
    return "without PLADIS" if float(match.group(1)) == 0 else f"PLADIS {match.group(1)}"


@dataclass(frozen=True)
class PromptEntry:
    """One line of a prompt file: its index (the line's place among the prompts), text and optional seed."""

    index: int
    prompt: str
    seed: int | None = None
    negative_prompt: str | None = None


def read_prompts(path: Path) -> list[PromptEntry]:
    """Prompts from a text file (one a line) or JSON lines (`{"prompt": ..., "seed": ..., "negative_prompt": ...}`).

    The file is JSON lines when any line is a JSON object or the first line starts with `{` (so a broken
    first line is an error, not a prompt); errors name the file and line. Blank lines are skipped and do not
    count towards the indices, which name the output files.
    """
    numbered = [(number, line.strip()) for number, line in enumerate(read_text_file(path).splitlines(), start=1)]
    numbered = [(number, line) for number, line in numbered if line]
    if not numbered:
        raise ValueError(f"{path} has no prompts")
    if not (numbered[0][1].startswith("{") or any(_is_json_object(line) for _, line in numbered)):
        return [PromptEntry(index, line) for index, (_, line) in enumerate(numbered)]
    entries = []
    for index, (number, line) in enumerate(numbered):
        where = f"{path}, line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{where}: not valid JSON ({error.msg} at column {error.colno}); every line of a "
                'JSON-lines prompt file is an object like {"prompt": "...", "seed": 0}'
            ) from None
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
            raise ValueError(f"{where}: needs a string 'prompt' field, got {line[:80]!r}")
        seed = record.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"{where}: non-integer seed {seed!r}")
        negative = record.get("negative_prompt")
        if negative is not None and not isinstance(negative, str):
            raise ValueError(f"{where}: 'negative_prompt' must be a string, got {negative!r}")
        entries.append(PromptEntry(index, record["prompt"], seed, negative))
    return entries


def _is_json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except json.JSONDecodeError:
        return False
