"""What the README promises about the scripts holds: LoRA weights never come from pickles, a run's settings
record the torch thread count its CPU results depend on, and recorded paths inside the repository are
relative (the committed `asset/readme/*.json` name no folder of the machine that built them)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionXLPipeline
from safetensors.torch import load_file

from pipeline.pipeline_sdxl import PLADISStableDiffusionXLPipeline
from scripts import attention_maps, compare
from scripts.cli import loading, records
from scripts.cli.assets import TINY_SDXL_LORA

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def pickled_lora(tmp_path):
    """The tiny LoRA's tensors written by `torch.save` (a pickle), as diffusers' `.bin` LoRA files are."""
    path = tmp_path / "pytorch_lora_weights.bin"
    torch.save(load_file(TINY_SDXL_LORA), path)
    return path


def test_lora_loading_refuses_pickles(pickled_lora, tiny_sdxl_path, capsys):
    state_dict = StableDiffusionXLPipeline.lora_state_dict(str(pickled_lora))[0]  # diffusers' default unpickles it
    assert len(state_dict) > 0
    pipe = PLADISStableDiffusionXLPipeline.from_pretrained(tiny_sdxl_path, local_files_only=True)
    with pytest.raises(ValueError, match="not a safetensors file"):  # named before diffusers sees it
        loading.fuse_lora_file(pipe, pickled_lora)
    loading.fuse_lora_file(pipe, TINY_SDXL_LORA)  # real safetensors load and fuse
    with pytest.raises(SystemExit):  # and the scripts refuse the name while parsing
        compare.parse_args(["--lora", str(pickled_lora)])
    assert "only .safetensors LoRA files are loaded" in capsys.readouterr().err


def test_every_lora_load_in_scripts_goes_through_the_safetensors_only_loader():
    sources = {path: path.read_text() for path in (ROOT / "scripts").rglob("*.py")}
    loads = [f"{path.relative_to(ROOT)}" for path, text in sources.items() if "load_lora_weights(" in text]
    assert loads == ["scripts/cli/loading.py"]  # fuse_lora_file, with use_safetensors=True
    assert "load_lora_weights(str(path), use_safetensors=True)" in sources[ROOT / "scripts" / "cli" / "loading.py"]


def test_settings_record_the_thread_count_and_repository_relative_model_paths(tmp_path, capsys):
    threads = torch.get_num_threads()
    path = compare.main(
        [
            "--model",
            str(ROOT / "asset" / "tiny-sdxl"),
            "--scales",
            "0",
            "--steps",
            "1",
            "--out",
            str(tmp_path / "grid.png"),
        ]
    )
    settings = json.loads(path.with_suffix(".json").read_text())
    assert settings["torch_threads"] == threads
    assert settings["model_source"] == "asset/tiny-sdxl"  # given absolute, recorded relative to the repository
    torch.set_num_threads(threads + 1)
    try:
        compare.parse_args(["--settings", str(path.with_suffix(".json"))])
    finally:
        torch.set_num_threads(threads)
    assert f"made with {threads} torch threads, this run has {threads + 1}" in capsys.readouterr().err


def test_recorded_paths_outside_the_repository_stay_as_given(tmp_path):
    assert records.recorded_path(str(ROOT / "asset" / "tiny-sdxl")) == "asset/tiny-sdxl"
    assert records.recorded_path(str(tmp_path)) == str(tmp_path)
    assert (
        records.recorded_path("stabilityai/stable-diffusion-xl-base-1.0") == "stabilityai/stable-diffusion-xl-base-1.0"
    )


def strings_in(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings_in(item)


@pytest.mark.parametrize(
    "name", ["compare_sweep.json", "compare_windows.json", "compare_layers.json", "attention_maps.json"]
)
def test_committed_readme_settings_name_no_absolute_path(name):
    settings = json.loads((ROOT / "asset" / "readme" / name).read_text())
    absolute = [text for text in strings_in(settings) if text.startswith("/") or Path(text).is_absolute()]
    assert absolute == []
    assert settings["model_source"] == "asset/toy-sdxl"  # the README's pictures come from the embedded toy


@pytest.mark.parametrize("name,script", [("compare_sweep.json", compare), ("attention_maps.json", attention_maps)])
def test_committed_readme_settings_are_what_a_rerun_of_them_records(name, script):
    """`--settings FILE` reruns with exactly the recorded arguments (a rerun records the same ones), and the
    record names the command that made it as it is run today (`python -m scripts.X`); a record with an older
    command or missing options cannot reproduce its picture bit for bit."""
    path = ROOT / "asset" / "readme" / name
    settings = json.loads(path.read_text())
    module = script.__name__
    assert settings["command"][:3] == ["python", "-m", module] and settings["script"] == module
    assert settings["rerun"] == f"python -m {module} --settings <this file>"
    rerun = records.run_settings(module, script.parse_args(["--settings", str(path)]), ["--settings", str(path)])
    assert rerun["arguments"] == settings["arguments"]
