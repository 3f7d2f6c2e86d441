"""`scripts/generate.py`: prompt files, per-prompt seeds, resumption image by image, refusal to mix settings,
and the accelerate split: two CPU processes write every image exactly once, identical to one process."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from scripts import generate
from scripts.cli.prompts import PromptEntry, png_damage, read_prompts

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = [
    {"prompt": "a photo of a cat", "seed": 7},
    {"prompt": "a red cube on a blue ball"},
    {"prompt": "a dog on the table", "negative_prompt": "blue"},
]


@pytest.fixture
def prompt_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(json.dumps(record) for record in PROMPTS) + "\n")
    return path


@contextmanager
def one_thread():
    """Match the workers of a multi-process launch (one intra-op thread each): CPU sums are thread-order exact."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def all_images(out: Path) -> dict[str, Path]:
    return {str(path.relative_to(out)): path for path in sorted(out.glob("pladis_*/*.png"))}


def test_prompt_files_are_text_lines_or_json_lines(tmp_path):
    text = tmp_path / "prompts.txt"
    text.write_text("a photo of a cat\n\n{not json} a red cube\n")
    assert read_prompts(text) == [PromptEntry(0, "a photo of a cat"), PromptEntry(1, "{not json} a red cube")]
    lines = tmp_path / "prompts.jsonl"
    lines.write_text('{"prompt": "a cat", "seed": 4}\n{"prompt": "a dog", "negative_prompt": "blue"}\n')
    assert read_prompts(lines) == [PromptEntry(0, "a cat", 4), PromptEntry(1, "a dog", None, "blue")]
    lines.write_text('{"prompt": "a cat", "seed": "four"}\n')
    with pytest.raises(ValueError, match="non-integer seed"):
        read_prompts(lines)


def test_batches_never_mix_negative_prompts():
    entries = [PromptEntry(0, "a"), PromptEntry(1, "b"), PromptEntry(2, "c", None, "blue"), PromptEntry(3, "d")]
    assert [[entry.index for entry in batch] for batch in generate.batches(entries, 2)] == [[0, 1], [2], [3]]


def test_images_are_named_by_prompt_and_scale_with_their_seed_and_resume_image_by_image(prompt_file, tmp_path):
    out = tmp_path / "out"
    options = ["--prompts", str(prompt_file), "--out", str(out), "--steps", "1", "--scales", "0,2", "--seed", "100"]
    written = generate.main(options)
    images = all_images(out)
    assert sorted(written) == sorted(images.values()) and len(images) == 2 * len(PROMPTS)
    assert sorted(images) == [f"pladis_{scale}/{index:05d}.png" for scale in (0, 2) for index in range(3)]
    seeds = [Image.open(out / "pladis_2" / f"{index:05d}.png").text["seed"] for index in range(3)]
    assert seeds == ["7", "101", "102"]  # the prompt's own seed, else base seed + index
    manifest = [json.loads(line) for line in (out / "prompts.jsonl").read_text().splitlines()]
    assert [record["seed"] for record in manifest] == [7, 101, 102]
    assert not np.array_equal(pixels(out / "pladis_0/00001.png"), pixels(out / "pladis_2/00001.png"))

    before = {name: pixels(path) for name, path in images.items()}
    assert generate.main(options) == []  # resumed: everything is there
    (out / "pladis_2/00001.png").unlink()
    assert generate.main(options) == [out / "pladis_2/00001.png"]  # only the missing image is redone
    assert all(np.array_equal(pixels(path), before[name]) for name, path in all_images(out).items())


@pytest.mark.slow
def test_resume_makes_empty_cut_short_or_broken_images_again_and_says_so(tmp_path, capsys):
    prompts, out = tmp_path / "prompts.txt", tmp_path / "out"
    prompts.write_text("a photo of a cat\na red cube\na dog\na bird\n")
    options = ["--prompts", str(prompts), "--out", str(out), "--steps", "1", "--scales", "0"]
    generate.main(options)
    paths = [out / "pladis_0" / f"{index:05d}.png" for index in range(4)]
    before = [pixels(path) for path in paths]
    data = paths[1].read_bytes()
    paths[0].write_bytes(b"")
    paths[1].write_bytes(data[: len(data) // 2])
    middle = len(data) // 2  # one flipped byte inside the image data: its chunk fails the CRC
    paths[2].write_bytes(data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :])
    capsys.readouterr()
    assert [png_damage(path) is None for path in paths] == [False, False, False, True]
    assert generate.main(options) == paths[:3]
    said = capsys.readouterr().out
    assert f"{paths[0]} is damaged (empty)" in said and f"{paths[1]} is damaged (cut short" in said
    assert f"{paths[2]} is damaged (broken" in said
    assert all(np.array_equal(pixels(path), image) for path, image in zip(paths, before, strict=True))


@pytest.mark.slow
def test_an_image_depends_on_its_prompt_and_seed_not_on_its_place_in_the_file(tmp_path):
    forward, backward = tmp_path / "forward.jsonl", tmp_path / "backward.jsonl"
    cat, cube = json.dumps({"prompt": "a photo of a cat", "seed": 9}), json.dumps({"prompt": "a red cube", "seed": 4})
    forward.write_text(f"{cat}\n{cube}\n")
    backward.write_text(f"{cube}\n{cat}\n")
    for path in (forward, backward):
        generate.main(["--prompts", str(path), "--out", str(tmp_path / path.stem), "--steps", "1", "--scales", "2"])
    assert np.array_equal(
        pixels(tmp_path / "forward/pladis_2/00000.png"), pixels(tmp_path / "backward/pladis_2/00001.png")
    )


@pytest.mark.slow  # several command-line runs
def test_resuming_with_other_settings_or_prompts_is_refused_but_extending_is_not(tmp_path):
    out = tmp_path / "out"
    text = tmp_path / "one.txt"
    text.write_text("a photo of a cat\n")
    generate.main(["--prompts", str(text), "--out", str(out), "--steps", "1", "--scales", "0"])
    with pytest.raises(SystemExit, match=r"other settings \(steps: 1 -> 2\)"):
        generate.main(["--prompts", str(text), "--out", str(out), "--steps", "2", "--scales", "0"])
    text.write_text("a photo of a dog\n")
    with pytest.raises(SystemExit, match="other prompts or seeds"):
        generate.main(["--prompts", str(text), "--out", str(out), "--steps", "1", "--scales", "0"])
    text.write_text("a photo of a cat\na photo of a dog\n")  # a prompt added at the end, and a new scale
    written = generate.main(["--prompts", str(text), "--out", str(out), "--steps", "1", "--scales", "0,2"])
    assert sorted(path.relative_to(out).as_posix() for path in written) == [
        "pladis_0/00001.png",
        "pladis_2/00000.png",
        "pladis_2/00001.png",
    ]


@pytest.mark.slow
def test_resuming_accepts_the_same_model_however_its_path_is_spelt(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    out, text = tmp_path / "out", tmp_path / "one.txt"
    text.write_text("a photo of a cat\n")
    options = ["--prompts", str(text), "--out", str(out), "--steps", "1", "--scales", "0"]
    generate.main([*options, "--model", "asset/tiny-sdxl"])
    for spelling in (
        "asset/tiny-sdxl/",
        "./asset/tiny-sdxl",
        str(ROOT / "asset" / "tiny-sdxl"),
        "asset/../asset/tiny-sdxl",
    ):
        assert generate.main([*options, "--model", spelling]) == [], spelling
    with pytest.raises(SystemExit, match=r"other settings \(model: '[^']*' -> 'asset/tiny-sdxl-controlnet'\)"):
        generate.main([*options, "--model", "asset/tiny-sdxl-controlnet"])


@pytest.mark.slow  # several processes
def test_two_processes_split_the_prompts_and_write_each_image_once_as_one_process_does(prompt_file, tmp_path):
    options = ["--prompts", str(prompt_file), "--steps", "1", "--scales", "0,2"]
    with one_thread():
        generate.main([*options, "--out", str(tmp_path / "single")])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    launch = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",  # torchrun
        "-m",
        "scripts.generate",
        *options,
        "--out",
        str(tmp_path / "multi"),
    ]
    result = subprocess.run(launch, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    reports = re.findall(r"process (\d)/2: wrote (\d+) images, 0 already there \((\d) of 3 prompts\)", result.stdout)
    assert sorted(reports) == [("0", "4", "2"), ("1", "2", "1")]  # accelerate's split: prompts [0, 1] and [2]
    single, multi = all_images(tmp_path / "single"), all_images(tmp_path / "multi")
    assert sorted(multi) == sorted(single) and len(multi) == 6  # 6 writes, 6 distinct files: each exactly once
    for name in single:
        np.testing.assert_array_equal(pixels(multi[name]), pixels(single[name]), err_msg=name)
