"""Bad input files are named with the problem (and line) instead of a traceback or a silent misreading:
JSON-lines prompt files with a broken line, non-UTF-8 prompt and settings files, settings files whose
recorded options are not valid, truncated PNGs given to evaluate.py, and layer ids of guidance that is off."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from pipeline.pipeline_sdxl_seg import PLADISStableDiffusionXLSEGPipeline
from scripts import compare, evaluate, generate
from scripts.cli.prompts import PromptEntry, read_prompts
from scripts.cli.records import read_settings
from tests.tiny import processors_by_name, same_processor_objects


@pytest.mark.parametrize(
    "text,line",
    [
        ('{"prompt": "a cat", "seed": 4\n{"prompt": "a dog"}\n', 1),  # the first line is broken
        ('a photo of a cat\n\n{"prompt": "a dog", "seed": 2}\n', 1),  # a JSON object further down: JSON lines
        ('{"prompt": "a cat"}\n\n{"prompt": "a dog",}\n', 3),  # blank lines still count for the line number
        ('{"prompt": "a cat"\n', 1),  # a single line that opens like a JSON object
    ],
)
def test_json_lines_files_with_a_bad_line_are_refused_naming_the_line(tmp_path, text, line):
    path = tmp_path / "prompts.jsonl"
    path.write_text(text)
    with pytest.raises(ValueError, match=rf"prompts.jsonl, line {line}: not valid JSON"):
        read_prompts(path)


def test_plain_text_files_stay_plain_text_and_fields_are_checked(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("a photo of a cat\nbraces {like this} are text\n[1, 2]\n")
    assert read_prompts(path) == [
        PromptEntry(0, "a photo of a cat"),
        PromptEntry(1, "braces {like this} are text"),
        PromptEntry(2, "[1, 2]"),
    ]
    path.write_text('{"prompt": "a cat"}\n{"prompt": "a dog", "negative_prompt": 3}\n')
    with pytest.raises(ValueError, match="line 2: 'negative_prompt' must be a string"):
        read_prompts(path)


def test_a_byte_order_mark_is_not_part_of_the_first_prompt(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_bytes("\ufeffa photo of a cat\na dog\n".encode())
    assert read_prompts(path) == [PromptEntry(0, "a photo of a cat"), PromptEntry(1, "a dog")]
    path.write_bytes('\ufeff{"prompt": "a cat", "seed": 3}\n'.encode())
    assert read_prompts(path) == [PromptEntry(0, "a cat", 3)]


def test_prompts_end_at_newlines_only_so_later_indices_and_seeds_never_shift(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("a cat\fon a mat\u2028in a hat\x1c\x85\nsecond\r\nthird\rfourth\n", newline="")
    prompts = [entry.prompt for entry in read_prompts(path)]
    assert prompts == ["a cat\fon a mat\u2028in a hat", "second", "third", "fourth"]


def test_a_plain_prompt_starting_with_a_brace_is_a_prompt(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("{red|blue} car on a road\n{a} and {b}\n")
    assert read_prompts(path) == [PromptEntry(0, "{red|blue} car on a road"), PromptEntry(1, "{a} and {b}")]


@pytest.mark.parametrize(
    "line,message",
    [
        ('{"prompt": "a cat", "sede": 3}', "line 2: unknown field\\(s\\) 'sede'; accepted: prompt, seed"),
        ('{"prompt": "a cat", "seed": 1180591620717411303424}', "line 2: seed 1180591620717411303424 is outside"),
        ('{"prompt": "a cat", "seed": -9223372036854775809}', "line 2: seed -9223372036854775809 is outside"),
        ('{"prompt": "a cat", "index": 5}', "line 2: 'index' is 5, but this is prompt 1"),
    ],
)
def test_json_lines_fields_and_seeds_are_checked_when_the_file_is_read(tmp_path, line, message):
    path = tmp_path / "prompts.jsonl"
    path.write_text(f'{{"prompt": "a dog", "seed": 18446744073709551615, "index": 0}}\n{line}\n')
    with pytest.raises(ValueError, match=message):
        read_prompts(path)


def test_a_seed_out_of_range_is_a_usage_error_before_any_model_loads(tmp_path, capsys):
    path = tmp_path / "prompts.txt"
    path.write_text("a cat\na dog\n")
    for argv, message in (
        (["--seed", str(2**70)], "seed 1180591620717411303424 is outside"),
        (["--seed", str(2**64 - 1)], "prompt 1 gets --seed + its index, and seed 18446744073709551616 is outside"),
    ):
        with pytest.raises(SystemExit) as stop:
            generate.main(["--prompts", str(path), "--out", str(tmp_path / "out"), *argv])
        assert stop.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_generate_reports_a_bad_prompt_file_as_a_usage_error(tmp_path, capsys):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "a cat", "seed": 4\n{"prompt": "a dog"}\n')
    with pytest.raises(SystemExit) as stop:
        generate.main(["--prompts", str(path), "--out", str(tmp_path / "out")])
    assert stop.value.code == 2
    assert f"--prompts: {path}, line 1: not valid JSON" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_non_utf8_prompt_and_settings_files_name_the_file_and_line(tmp_path, capsys):
    prompts = tmp_path / "latin1.txt"
    prompts.write_bytes("a photo of a cat\na caf\u00e9 at night\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1.txt, line 2: not UTF-8 text \(byte 0xe9\)"):
        read_prompts(prompts)
    settings = tmp_path / "settings.json"
    settings.write_bytes(b'{"arguments": {"prompt": "caf\xe9"}}')
    with pytest.raises(SystemExit) as stop:
        compare.main(["--settings", str(settings)])
    assert stop.value.code == 2
    assert f"--settings: {settings}, line 1: not UTF-8 text" in capsys.readouterr().err


def test_broken_settings_json_names_the_line_and_column(tmp_path, capsys):
    settings = tmp_path / "grid.json"
    settings.write_text('{\n  "arguments": {\n    "steps": 2,\n  }\n}\n')
    with pytest.raises(ValueError, match=r"grid.json, line 4 column 3: not valid JSON"):
        read_settings(settings)
    with pytest.raises(SystemExit):
        compare.main(["--settings", str(settings)])
    assert "line 4 column 3" in capsys.readouterr().err


@pytest.mark.parametrize(
    "recorded,message",
    [
        ({"pipeline": "nosuch"}, "'pipeline' is 'nosuch'; expected one of auto, controlnet, flux, sdxl, sdxl-seg"),
        ({"steps": "two"}, "'steps' is 'two'; expected an integer"),
        ({"guidance_scale": [5]}, "'guidance_scale' is [5]; expected a number"),
        ({"dtype": "float8"}, "'dtype' is 'float8'; expected one of"),
        ({"freeu": 1.1}, "'freeu' is 1.1; expected a list"),
        ({"freeu": [1.1, "a", 0.9, 0.2]}, "'freeu' is [1.1, 'a', 0.9, 0.2]; expected a number"),
    ],
)
def test_settings_values_are_checked_like_the_command_line(tmp_path, capsys, recorded, message):
    settings = tmp_path / "grid.json"
    settings.write_text(json.dumps({"arguments": {"prompt": "a cat", **recorded}}))
    with pytest.raises(SystemExit) as stop:
        compare.parse_args(["--settings", str(settings)])
    assert stop.value.code == 2
    assert f"--settings {settings}: {message}" in capsys.readouterr().err


def test_valid_recorded_values_are_taken(tmp_path):
    settings = tmp_path / "grid.json"
    recorded = {
        "prompt": "a cat",
        "freeu": [1.1, 1.2, 0.9, 0.2],
        "steps": 3,
        "guidance_scale": 4,
        "dtype": "float32",
        "scales": [0.0, 1.5],
        "out": "grid.png",
        "pipeline": "sdxl",
    }
    settings.write_text(json.dumps({"arguments": recorded}))
    args = compare.parse_args(["--settings", str(settings)])
    assert (args.freeu, args.steps, args.guidance_scale, args.scales) == ([1.1, 1.2, 0.9, 0.2], 3, 4, [0.0, 1.5])


def test_evaluate_names_a_truncated_png(tmp_path):
    folder = tmp_path / "pladis_0"
    folder.mkdir()
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    image.save(folder / "00000.png")
    image.save(folder / "00001.png")
    data = (folder / "00001.png").read_bytes()
    (folder / "00001.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "a cat"}\n{"prompt": "a dog"}\n')
    with pytest.raises(SystemExit, match=r"00001.png is not a readable image"):
        evaluate.main([str(folder), "--clip-model", str(tmp_path / "no-clip-needed"), "--device", "cpu"])


def test_layer_ids_of_guidance_that_is_off_are_still_checked(tiny_sdxl_path):
    pipe = PLADISStableDiffusionXLSEGPipeline.from_pretrained(tiny_sdxl_path, local_files_only=True)
    before = processors_by_name(pipe.unet)
    with pytest.raises(ValueError, match="seg_applied_layers: 'midd' matches no self-attention layer"):
        pipe("a cat", pag_scale=3.0, seg_applied_layers=["midd"], num_inference_steps=1)
    with pytest.raises(ValueError, match="pag_applied_layers: 'down.block_1' matches no"):
        pipe("a cat", seg_scale=3.0, pag_applied_layers="down.block_1", num_inference_steps=1)
    with pytest.raises(ValueError, match="pag_applied_layers"):
        pipe("a cat", pag_applied_layers=["nosuch"], num_inference_steps=1)  # plain CFG call
    assert same_processor_objects(pipe.unet, before)
