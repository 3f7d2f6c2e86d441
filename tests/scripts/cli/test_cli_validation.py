"""Every script option is checked while parsing: a bad value is a usage error (exit code 2) naming the option
and what it accepts, before any model loads, so no generation work is thrown away at save time."""

from __future__ import annotations

import importlib
import os
import re
import shutil
import sys

import pytest
import torch
from diffusers import DiffusionPipeline

from scripts import attention_maps, compare, evaluate, generate
from scripts.cli.assets import TINY_CONTROL_IMAGE, TINY_SDXL


@pytest.fixture
def no_model_loads(monkeypatch):
    """Any pipeline load fails the test: the errors must come before it."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the options were checked")

    monkeypatch.setattr(DiffusionPipeline, "from_pretrained", classmethod(refuse))


def usage_error(run, argv, capsys) -> str:
    """Run `run(argv)`, expect argparse's usage-error exit (code 2) and return its message."""
    with pytest.raises(SystemExit) as stop:
        run(argv)
    assert stop.value.code == 2
    return capsys.readouterr().err


def output_cases(tmp_path):
    """(--out value, message) pairs that must be refused for a grid PNG."""
    (tmp_path / "existing").mkdir()
    (tmp_path / "a-file").write_text("not a folder")
    (tmp_path / "taken.json").mkdir()  # where the settings next to taken.png would go
    return [
        (tmp_path / "grid", "needs an image extension PIL can write"),
        (tmp_path / "grid.json", "needs an image extension PIL can write"),
        (tmp_path / "grid.xbm", "needs an image extension PIL can write an RGB image as"),  # 1-bit only
        (tmp_path / "existing", "is an existing folder"),
        (tmp_path / "taken.png", "taken.json is an existing folder"),
        (tmp_path / "a-file" / "grid.png", "is a file, so the folder"),
    ]


@pytest.mark.parametrize("script", [compare.main, attention_maps.main])
def test_bad_output_names_are_usage_errors_before_loading(script, tmp_path, capsys, no_model_loads):
    for out, message in output_cases(tmp_path):
        error = usage_error(script, ["--steps", "1", "--out", str(out)], capsys)
        assert "--out" in error and message in error, (out, error)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a-file", "existing", "taken.json"]  # nothing written


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's read-only /proc")
def test_an_unwritable_output_folder_is_a_usage_error(capsys, no_model_loads):
    error = usage_error(compare.main, ["--out", "/proc/grid.png"], capsys)
    assert "--out /proc/grid.png: cannot write in /proc" in error


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0, reason="permissions do not bind root")
def test_a_read_only_output_folder_is_a_usage_error(tmp_path, capsys, no_model_loads):
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        error = usage_error(compare.main, ["--out", str(folder / "grid.png")], capsys)
    finally:
        folder.chmod(0o755)
    assert "cannot write in" in error


@pytest.mark.parametrize(
    "argv,message",
    [
        (
            ["--seg-scale", "3"],
            "--seg-scale is not an option of --pipeline sdxl; it needs --pipeline controlnet or sdxl-seg",
        ),
        (["--pag-layers", "mid"], "--pag-layers is not an option of --pipeline sdxl"),
        (["--control-image", str(TINY_CONTROL_IMAGE)], "--control-image is not an option of --pipeline sdxl"),
        (["--pipeline", "flux", "--seg-scale", "3"], "--seg-scale is not an option of --pipeline flux"),
        (["--height", "60"], "--height must be a multiple of 8 for this pipeline and model, got 60 (e.g. 56 or 64)"),
        (["--width", "100"], "--width must be a multiple of 8"),
        (["--height", "4"], "--height must be >= 8"),
        (["--pipeline", "flux", "--width", "66"], "--width must be a multiple of 4"),  # 2 × the tiny VAE's factor 2
        (["--pipeline", "sdxl-seg", "--pag-scale", "2", "--seg-scale", "3"], "PAG and SEG"),
        (["--pipeline", "sdxl-seg", "--seg-scale", "-1"], "--seg-scale must be finite and >= 0"),
        (["--pipeline", "sdxl-seg", "--seg-scale", "3", "--seg-blur-sigma", "0"], "seg_blur_sigma must be > 0"),
        (
            ["--pipeline", "sdxl-seg", "--seg-scale", "3", "--seg-layers", "midd"],
            "--seg-layers: 'midd' matches no self-attention layer",
        ),
        (
            ["--pipeline", "sdxl-seg", "--seg-layers", "down.block_1"],
            "--seg-layers: 'down.block_1' matches no",
        ),  # unused, still checked
        (
            ["--pipeline", "controlnet", "--pag-scale", "1", "--pag-layers", "mid,nosuch"],
            "--pag-layers: 'nosuch' matches no",
        ),
        (["--lora", str(TINY_CONTROL_IMAGE)], "only .safetensors LoRA files are loaded"),
        (["--pipeline", "flux", "--freeu", "1", "1", "1", "1"], "--freeu needs a U-Net pipeline"),
        (
            ["--pipeline", "auto", "--model", "asset/tiny-flux-schnell", "--freeu", "1", "1", "1", "1"],
            "FluxPipeline has no FreeU",
        ),
        (
            ["--pipeline", "controlnet", "--model", "asset/tiny-sdxl"],
            "--model asset/tiny-sdxl (a StableDiffusionXLPipeline) has no controlnet, which "
            "PLADISStableDiffusionXLControlNetPipeline (--pipeline controlnet) needs: give the ControlNet with "
            "--controlnet",
        ),
        (
            ["--pipeline", "flux", "--model", "asset/tiny-sdxl"],
            "--model asset/tiny-sdxl (a StableDiffusionXLPipeline) has no transformer, which PLADISFluxPipeline "
            "(--pipeline flux) needs; it loads with --pipeline sdxl or sdxl-seg or auto",
        ),
        (
            ["--model", "asset/tiny-flux-schnell"],
            "has no unet, which PLADISStableDiffusionXLPipeline (--pipeline sdxl)",
        ),
        (["--pipeline", "controlnet", "--control-image", "README.md"], "--control-image README.md: not an image file"),
    ],
)
def test_options_only_the_pipeline_checked_are_usage_errors_before_loading(argv, message, capsys, no_model_loads):
    error = usage_error(compare.main, argv, capsys)
    assert message in error


def test_layer_ids_the_model_has_pass_the_early_check(no_model_loads):
    from scripts.cli import checks

    args = compare.parse_args(
        [
            "--pipeline",
            "sdxl-seg",
            "--seg-scale",
            "3",
            "--seg-layers",
            "mid,up_blocks.0",
            "--pag-layers",
            "down_blocks.2.attentions.1",
        ]
    )
    assert args.seg_layers == ["mid", "up_blocks.0"] and args.pag_layers == ["down_blocks.2.attentions.1"]
    names = checks.unet_self_attention_names(str(TINY_SDXL))
    assert len(names) == 22 and all(name.endswith("attn1") for name in names)  # the tiny U-Net's self-attention
    assert checks.unet_self_attention_names("someone/not-downloaded") is None  # checked right after loading then


def test_layer_ids_not_checkable_while_parsing_are_checked_right_after_loading(monkeypatch):
    from scripts.cli import checks, loading

    monkeypatch.setattr(checks, "unet_self_attention_names", lambda model: None)  # as for a hub id not downloaded
    args = compare.parse_args(["--pipeline", "sdxl-seg", "--seg-scale", "3", "--seg-layers", "midd", "--steps", "1"])
    pipe = loading.load_pipeline(args)
    with pytest.raises(ValueError, match="--seg-layers: 'midd' matches no self-attention layer"):
        loading.call_options(pipe, args, 64, 64)


def test_record_steps_beyond_the_run_are_a_usage_error(tmp_path, capsys, no_model_loads):
    error = usage_error(
        attention_maps.main, ["--steps", "2", "--record-steps", "0-3", "--out", str(tmp_path / "m.png")], capsys
    )
    assert "--record-steps 2,3: the run has 2 steps, numbered 0 to 1" in error
    error = usage_error(attention_maps.main, ["--record-steps", "3-1"], capsys)
    assert "--record-steps names no step" in error
    assert attention_maps.parse_args(["--steps", "2", "--record-steps", "0-1"]).record_steps == [0, 1]


@pytest.mark.parametrize(
    "name,argv,message",
    [
        ("sdxl_cfg", ["--out", "grid"], "--out grid: the name needs an image extension"),
        ("sdxl_cfg", ["--height", "60"], "--height must be a multiple of 8"),
        ("flux_schnell", ["--width", "30"], "--width must be a multiple of 4"),
        ("sdxl_seg", ["--seg-layers", "midd"], "--seg-layers: 'midd' matches no self-attention layer"),
        ("sdxl_pag", ["--pag-layers", "mid", "nosuch"], "--pag-layers: 'nosuch' matches no"),
        ("sdxl_dmd2", ["--lora", "weights.bin"], "only .safetensors LoRA files are loaded"),
        ("sdxl_lightning", ["--lora", "./missing/lora.safetensors"], "--lora: no such file"),
        ("controlnet_depth", ["--image", "./missing/photo.png"], "--image: no such file or folder"),
        ("controlnet_depth", ["--image", "README.md"], "README.md: not an image file PIL can read"),
        ("sdxl_seg", ["--seg-scale", "-1"], "--seg-scale must be finite and >= 0"),
        ("sdxl_seg", ["--seg-blur-sigma", "0"], "seg_blur_sigma must be > 0"),
        ("sdxl_pag", ["--pag-scale", "nan"], "--pag-scale must be finite and >= 0"),
        ("sdxl_freeu", ["--model", "asset/tiny-flux-schnell"], "has no unet, which PLADISStableDiffusionXLPipeline"),
    ],
)
def test_examples_check_their_options_before_loading(name, argv, message, tmp_path, capsys, no_model_loads):
    example = importlib.import_module(f"scripts.examples.{name}")
    out = [] if "--out" in argv else ["--out", str(tmp_path / "grid.png")]
    error = usage_error(example.main, ["--tiny", "--device", "cpu", *out, *argv], capsys)
    assert message in error
    assert not (tmp_path / "grid.png").exists()


def damaged_copy(tmp_path, damage: str):
    """A copy of the tiny SDXL with one thing broken, as a copy cut short or an incomplete download leaves it."""
    folder = tmp_path / damage
    shutil.copytree(TINY_SDXL, folder)
    if damage == "truncated weights":
        path = folder / "text_encoder" / "model.safetensors"
        path.write_bytes(path.read_bytes()[:-1000])
    elif damage == "truncated tokenizer":
        path = folder / "tokenizer" / "tokenizer.json"
        path.write_bytes(path.read_bytes()[:-100])
    else:
        shutil.rmtree(folder / "tokenizer_2")
    return folder


@pytest.mark.parametrize(
    "damage,message",
    [
        ("truncated weights", "text_encoder/model.safetensors is cut short or damaged: its header describes"),
        ("truncated tokenizer", "tokenizer/tokenizer.json is not valid JSON"),
        ("missing tokenizer_2", "the component folder tokenizer_2/ is missing (model_index.json names it)"),
    ],
)
def test_damaged_model_folders_name_the_component_before_and_at_loading(damage, message, tmp_path, capsys):
    from scripts.cli import loading

    model = damaged_copy(tmp_path, damage)
    error = usage_error(compare.main, ["--model", str(model), "--out", str(tmp_path / "grid.png")], capsys)
    assert f"--model {model}: {message}" in error
    args = compare.parse_args(["--out", str(tmp_path / "grid.png")])
    args.model = str(model)  # as a script calling the loader directly would
    with pytest.raises(ValueError, match=re.escape(f"--model {model}: {message}")):
        loading.load_pipeline(args)


def test_a_pickle_named_safetensors_is_refused_as_lora_naming_the_file(tmp_path, capsys, no_model_loads):
    lora = tmp_path / "weights.safetensors"
    torch.save({"lora_A.weight": torch.zeros(2, 2)}, lora)
    error = usage_error(compare.main, ["--lora", str(lora), "--out", str(tmp_path / "grid.png")], capsys)
    assert f"--lora {lora}: not a safetensors file (no safetensors header: a pickle?)" in error
    error = usage_error(
        importlib.import_module("scripts.examples.sdxl_dmd2").main,
        ["--tiny", "--device", "cpu", "--lora", str(lora), "--out", str(tmp_path / "grid.png")],
        capsys,
    )
    assert f"--lora {lora}: not a safetensors file" in error


def test_generate_output_folder_must_be_a_writable_folder(tmp_path, capsys, no_model_loads):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo of a cat\n")
    error = usage_error(generate.main, ["--prompts", str(prompts), "--out", str(prompts)], capsys)
    assert f"--out {prompts}: is an existing file" in error


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """HF_HUB_OFFLINE=1 as huggingface_hub read it, with an empty local cache."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))


@pytest.mark.parametrize(
    "argv,named",
    [
        (["--model", "someone/sdxl"], "--model someone/sdxl: not in the local Hugging Face cache"),
        (["--pipeline", "flux", "--model", "black-forest-labs/FLUX.1-dev"], "--model black-forest-labs/FLUX.1-dev"),
        (
            ["--pipeline", "controlnet", "--controlnet", "diffusers/controlnet-depth-sdxl-1.0"],
            "--controlnet diffusers/controlnet-depth-sdxl-1.0: not in the local Hugging Face cache",
        ),
    ],
)
def test_hub_models_missing_from_the_cache_offline_are_usage_errors(argv, named, capsys, offline, no_model_loads):
    line = usage_error(compare.main, argv, capsys).strip().splitlines()[-1]  # one line after the usage
    assert named in line and "HF_HUB_OFFLINE=1" in line


@pytest.mark.parametrize("name", ["sdxl_cfg", "sdxl_lightning", "flux_dev", "controlnet_depth"])
def test_examples_without_tiny_offline_say_so_and_name_tiny(name, tmp_path, capsys, offline, no_model_loads):
    example = importlib.import_module(f"scripts.examples.{name}")
    error = usage_error(example.main, ["--device", "cpu", "--out", str(tmp_path / "grid.png")], capsys)
    line = error.strip().splitlines()[-1]
    assert "HF_HUB_OFFLINE=1" in line and "--tiny" in line


def test_a_cuda_device_torch_cannot_see_is_a_usage_error(tmp_path, capsys, monkeypatch, no_model_loads):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo of a cat\n")
    example = importlib.import_module("scripts.examples.sdxl_cfg")
    for run, argv in (
        (compare.main, ["--device", "cuda"]),
        (generate.main, ["--prompts", str(prompts), "--device", "cuda:0"]),
        (attention_maps.main, ["--device", "cuda"]),
        (example.main, ["--tiny", "--device", "cuda"]),
        (evaluate.main, [str(tmp_path), "--device", "cuda"]),
    ):
        error = usage_error(run, argv, capsys)
        assert "torch sees no CUDA GPU" in error and "--device cpu" in error, argv


def test_canny_without_controlnet_aux_names_the_extra_to_install(capsys, monkeypatch, no_model_loads):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *rest: None if name == "controlnet_aux" else find_spec(name, *rest)
    )
    error = usage_error(compare.main, ["--pipeline", "controlnet", "--preprocess", "canny"], capsys)
    assert "--preprocess canny needs the controlnet_aux package" in error and "pip install -e .[controlnet]" in error
