"""Prompt files and the folder layout `generate` writes and `evaluate` reads: one subfolder per λ
(`pladis_0`, `pladis_2`, ...), one `NNNNN.png` per prompt index, and the prompts manifest beside them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from .checks import seed_problem
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


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the empty IEND chunk every complete PNG ends with


def png_damage(path: Path) -> str | None:
    """Why the file at `path` is not a complete PNG (empty, cut short, not a PNG, a chunk failing its CRC), or
    None: a resumed run redoes such an image instead of counting it done."""
    try:
        with open(path, "rb") as file:
            head = file.read(len(PNG_SIGNATURE))
            size = file.seek(0, 2)
            file.seek(max(size - len(PNG_END), 0))
            tail = file.read()
    except OSError as error:
        return f"cannot be read ({error.strerror or error})"
    if size == 0:
        return "empty"
    if head != PNG_SIGNATURE:
        return "not a PNG"
    if tail != PNG_END:
        return "cut short (no PNG end chunk)"
    try:
        with Image.open(path) as image:
            image.verify()  # every chunk's CRC, without decoding the pixels
    except (OSError, SyntaxError, ValueError) as error:  # PIL reports broken PNG chunks as SyntaxError
        return f"broken ({error})"
    return None


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


PROMPT_FIELDS = ("prompt", "seed", "negative_prompt", "index")  # "index": the manifest's, the line's place
_LINE_BREAK = re.compile(r"\r\n|\r|\n")  # newlines only (`str.splitlines` also splits on \f, \v, U+2028, ...)


def read_prompts(path: Path) -> list[PromptEntry]:
    """Prompts from a text file (one a line) or JSON lines (`{"prompt": ..., "seed": ..., "negative_prompt": ...}`).

    The file is JSON lines when any line is a JSON object or opens like one (`{"`), and then every line must be
    one (a broken line is an error, not a prompt); a line like `{red|blue} car` in a plain file stays a prompt.
    Lines end at newlines only (LF, CRLF, CR); a UTF-8 byte-order mark is dropped. Unknown fields and seeds a
    generator cannot take are errors; errors name the file and line. Blank lines are skipped and do not count
    towards the indices, which name the output files.
    """
    lines = _LINE_BREAK.split(read_text_file(path))
    numbered = [(number, line.strip()) for number, line in enumerate(lines, start=1) if line.strip()]
    if not numbered:
        raise ValueError(f"{path} has no prompts")
    if not any(line.startswith('{"') or _is_json_object(line) for _, line in numbered):
        return [PromptEntry(index, line) for index, (_, line) in enumerate(numbered)]
    return [
        _json_line_entry(index, record_line, f"{path}, line {number}")
        for index, (number, record_line) in enumerate(numbered)
    ]


def _json_line_entry(index: int, line: str, where: str) -> PromptEntry:
    """The prompt of one JSON line, checked (`where` names the file and line in errors)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{where}: not valid JSON ({error.msg} at column {error.colno}); every line of a "
            'JSON-lines prompt file is an object like {"prompt": "...", "seed": 0}'
        ) from None
    if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
        raise ValueError(f"{where}: needs a string 'prompt' field, got {line[:80]!r}")
    unknown = sorted(set(record) - set(PROMPT_FIELDS))
    if unknown:
        raise ValueError(
            f"{where}: unknown field(s) {', '.join(map(repr, unknown))}; accepted: {', '.join(PROMPT_FIELDS)}"
        )
    seed = record.get("seed")
    if seed is not None and (problem := seed_problem(seed)):
        raise ValueError(f"{where}: {problem}")
    negative = record.get("negative_prompt")
    if negative is not None and not isinstance(negative, str):
        raise ValueError(f"{where}: 'negative_prompt' must be a string, got {negative!r}")
    if "index" in record and record["index"] != index:
        raise ValueError(f"{where}: 'index' is {record['index']!r}, but this is prompt {index} (counted from 0)")
    return PromptEntry(index, record["prompt"], seed, negative)


def _is_json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except json.JSONDecodeError:
        return False
