"""`scripts/evaluate.py` scores each image against the prompt it was made from: the prompt a generated PNG
carries in its text fields must equal the prompt it would be scored against, checked before any model loads."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from scripts import evaluate

PROMPTS = ["a photo of a cat", "a red cube on a blue ball", "a dog on the table"]


class ReachedScoring(Exception):
    """Raised instead of loading CLIP: the prompt check has passed."""


@pytest.fixture
def no_scoring(monkeypatch):
    """Scoring stops where the CLIP model would load (also offline, where the default CLIP is not cached)."""

    def stop(*args, **kwargs):
        raise ReachedScoring

    monkeypatch.setattr(evaluate, "ClipModel", stop)
    monkeypatch.setattr(evaluate.checks, "hub_offline_problem", lambda *args, **kwargs: None)


def save_generated(folder, prompts, with_text=True):
    """PNGs named like generate.py's, each with its prompt in the `prompt` text field (as generate.py writes)."""
    folder.mkdir(parents=True)
    for index, prompt in enumerate(prompts):
        info = PngInfo()
        if with_text:
            info.add_text("prompt", prompt)
        pixels = np.random.default_rng(index).integers(0, 256, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{index:05d}.png", pnginfo=info)


def test_images_made_from_other_prompts_are_refused_before_any_model_loads(tmp_path, no_scoring):
    save_generated(tmp_path / "out" / "pladis_0", PROMPTS)
    save_generated(tmp_path / "out" / "pladis_2", PROMPTS)
    wrong = tmp_path / "other.txt"
    wrong.write_text("a photo of a cat\ntwo horses in space\na dog on the table\n")  # line 2 differs
    with pytest.raises(SystemExit) as stop:
        evaluate.main(
            [
                str(tmp_path / "out" / "pladis_0"),
                str(tmp_path / "out" / "pladis_2"),
                "--prompts",
                str(wrong),
                "--device",
                "cpu",
            ]
        )
    message = str(stop.value)
    assert "2 images carry another prompt" in message
    assert "pladis_0/00001.png: made from 'a red cube on a blue ball', scored against 'two horses in space'" in message
    assert "pladis_2/00001.png" in message and "00000.png" not in message


def test_matching_prompts_pass_the_check(tmp_path, no_scoring):
    save_generated(tmp_path / "out" / "pladis_0", PROMPTS)
    (tmp_path / "out" / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    with pytest.raises(ReachedScoring):
        evaluate.main([str(tmp_path / "out" / "pladis_0"), "--device", "cpu"])


def test_images_without_a_prompt_field_are_noted_not_refused(tmp_path, no_scoring, capsys):
    save_generated(tmp_path / "reference-style" / "pladis_0", PROMPTS, with_text=False)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    with pytest.raises(ReachedScoring):
        evaluate.main([str(tmp_path / "reference-style" / "pladis_0"), "--prompts", str(prompts), "--device", "cpu"])
    assert "3 images carry no prompt text field" in capsys.readouterr().err


def test_generate_writes_the_prompt_field_evaluate_reads(tmp_path):
    from scripts import generate
    from scripts.cli.prompts import PromptEntry

    path = tmp_path / "00000.png"
    image = Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8))
    generate.save_image(image, path, PromptEntry(0, "a cat, café, 猫"), seed=3, scale=2.0)
    assert evaluate.image_prompt(path) == "a cat, café, 猫"


@pytest.mark.parametrize(
    "argv,message",
    [
        (["missing/pladis_0"], "no such folder: missing/pladis_0"),
        (["{folder}", "--prompts", "missing.txt"], "--prompts: no such file: missing.txt"),
        (["{folder}", "--reference", "missing-coco"], "--reference: no such folder: missing-coco"),
        (["{folder}", "--inception-weights", "missing.pth"], "--inception-weights: no such file: missing.pth"),
        (["{folder}", "--json", "{folder}"], "is an existing folder"),
    ],
)
def test_missing_inputs_and_bad_outputs_are_usage_errors(tmp_path, capsys, no_scoring, argv, message):
    save_generated(tmp_path / "pladis_0", PROMPTS)
    argv = [item.format(folder=tmp_path / "pladis_0") for item in argv]
    with pytest.raises(SystemExit) as stop:
        evaluate.main(argv)
    assert stop.value.code == 2 and message.format(folder=tmp_path / "pladis_0") in capsys.readouterr().err
