"""`scripts/compare.py` as the one CLI: λ sweeps, the settings JSON that reproduces a grid, the pipeline and
scheduler tables, LoRA, and clear errors for options a pipeline does not take."""

from __future__ import annotations

import importlib.metadata
import json

import numpy as np
import pytest
from diffusers import StableDiffusionXLPipeline
from PIL import Image

from scripts import compare
from scripts.cli import assets, loading, registry
from scripts.cli.assets import TINY_SDXL_LORA

CELL, LABEL = 256, 24  # 64×64 panels are shown ×4 under a 24 px label strip
TINY = ["--model", "asset/tiny-sdxl"]  # the random-weight SDXL (the default model is the trained toy)


def panels_of(path, count):
    """The panels of a one-row grid, back at 64×64 (the grid enlarges them by nearest neighbour); its caption
    lies below them."""
    grid = np.asarray(Image.open(path).convert("RGB"))
    assert grid.shape[1:] == (count * CELL, 3) and grid.shape[0] > LABEL + CELL
    return [grid[LABEL : LABEL + CELL : 4, index * CELL : (index + 1) * CELL : 4] for index in range(count)]


def test_sweep_has_one_labelled_panel_per_scale_and_json_records_every_setting(tmp_path, capsys):
    path = compare.main(
        [*TINY, "--scales", "0,1,2", "--steps", "1", "--seed", "3", "--out", str(tmp_path / "sweep.png")]
    )
    panels = panels_of(path, 3)
    assert all(np.abs(panels[0].astype(int) - panel).max() > 0 for panel in panels[1:])  # λ changes the picture
    settings = json.loads(path.with_suffix(".json").read_text())
    arguments = settings["arguments"]
    assert arguments["scales"] == [0.0, 1.0, 2.0] and arguments["steps"] == 1 and arguments["seed"] == 3
    assert arguments["pipeline"] == "sdxl" and arguments["model"] == "asset/tiny-sdxl"
    assert (arguments["height"], arguments["width"], arguments["guidance_scale"]) == (64, 64, 5.0)
    assert settings["seed"] == 3
    assert settings["panels"] == ["CFG 5 (no PLADIS)", "CFG 5 + PLADIS scale=1", "CFG 5 + PLADIS scale=2"]
    for package in ("torch", "diffusers", "transformers", "accelerate", "entmax"):
        assert settings["versions"][package] == importlib.metadata.version(package)
    assert "3/3" in capsys.readouterr().err  # one progress bar over all steps of the job


@pytest.mark.slow
def test_rerunning_from_the_json_reproduces_the_grid_bit_for_bit(tmp_path):
    first = compare.main(
        [
            "--scales",
            "0,2",
            "--steps",
            "1",
            "--seed",
            "5",
            "--prompt",
            "a blue ball",
            "--out",
            str(tmp_path / "first.png"),
        ]
    )
    again = compare.main(["--settings", str(first.with_suffix(".json")), "--out", str(tmp_path / "again.png")])
    np.testing.assert_array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(first)))
    recorded = json.loads(again.with_suffix(".json").read_text())["arguments"]
    original = json.loads(first.with_suffix(".json").read_text())["arguments"]
    assert {**recorded, "out": None} == {**original, "out": None}
    assert recorded["prompt"] == "a blue ball"  # read from the file, not the default


def test_scale_zero_panel_is_the_stock_pipeline_image(tmp_path):
    args = compare.parse_args([*TINY, "--scales", "0", "--steps", "1", "--seed", "2"])
    images, labels = compare.generate_panels(args)
    stock = StableDiffusionXLPipeline.from_pretrained(str(assets.ASSET_DIR / "tiny-sdxl"), local_files_only=True)
    expected = stock(
        args.prompt,
        num_inference_steps=1,
        guidance_scale=5.0,
        height=64,
        width=64,
        generator=loading.seeded_generator(2),
    ).images[0]
    assert labels == ["CFG 5 (no PLADIS)"]
    np.testing.assert_array_equal(np.asarray(images[0]), np.asarray(expected))


@pytest.mark.slow  # per scheduler
@pytest.mark.parametrize(
    "scheduler,call",
    [
        ("lcm", {"timesteps": [999, 499]}),
        ("euler-trailing", {"num_inference_steps": 2}),
        ("ddim-trailing", {"num_inference_steps": 2}),
    ],
)
def test_lora_and_distilled_scheduler_options_match_the_manual_recipe(scheduler, call):
    options = [*TINY, "--lora", str(TINY_SDXL_LORA), "--scheduler", scheduler, "--guidance-scale", "0", "--scales", "0"]
    options += ["--timesteps", "999,499"] if "timesteps" in call else ["--steps", "2"]
    args = compare.parse_args(options)
    images, _ = compare.generate_panels(args)
    stock = StableDiffusionXLPipeline.from_pretrained(str(assets.ASSET_DIR / "tiny-sdxl"), local_files_only=True)
    stock.load_lora_weights(str(TINY_SDXL_LORA))
    stock.fuse_lora()
    scheduler_class, scheduler_options = registry.SCHEDULERS[scheduler]
    stock.scheduler = getattr(__import__("diffusers"), scheduler_class).from_config(
        stock.scheduler.config, **scheduler_options
    )
    assert type(stock.scheduler).__name__ == scheduler_class
    expected = stock(
        args.prompt, guidance_scale=0.0, height=64, width=64, generator=loading.seeded_generator(0), **call
    )
    np.testing.assert_array_equal(np.asarray(images[0]), np.asarray(expected.images[0]))


def test_unknown_scheduler_names_the_accepted_ones(capsys):
    with pytest.raises(ValueError, match="accepted: ddim-trailing, euler-trailing, lcm"):
        registry.set_scheduler(object(), "dpm")
    with pytest.raises(SystemExit):
        compare.parse_args(["--scheduler", "dpm"])
    assert "lcm" in capsys.readouterr().err


def test_pipeline_table_imports_its_classes_lazily_and_errors_clearly():
    from diffusers import DiffusionPipeline

    for name, choice in registry.PIPELINES.items():
        cls = registry.pipeline_class(name)
        assert cls.__name__ == choice.class_name and issubclass(cls, DiffusionPipeline)
        if name != "auto":  # auto loads the stock class, which PLADIS reaches through apply_pladis
            assert {"pladis_scale", "pladis_alpha"} <= registry.call_parameters(cls)
        assert (assets.REPO_ROOT / choice.tiny_model / "model_index.json").exists()
    with pytest.raises(ValueError, match="accepted: auto, controlnet, flux, sdxl, sdxl-seg"):
        registry.pipeline_class("sd15")


def test_guidance_options_a_pipeline_does_not_take_are_refused(capsys):
    with pytest.raises(SystemExit) as stop:  # while parsing: a usage error, before the model loads
        compare.parse_args(["--seg-scale", "3", "--steps", "1"])
    assert stop.value.code == 2
    assert (
        "--seg-scale is not an option of --pipeline sdxl; it needs --pipeline controlnet or sdxl-seg"
        in capsys.readouterr().err
    )


@pytest.mark.parametrize(
    "argument,named",
    [
        (["--scales", "a,b"], "--scales"),
        (["--timesteps", "999", "--steps", "2"], "--steps"),
        (["--preprocess", "canny"], "--control-image"),
        (
            ["--pipeline", "controlnet", "--model", "asset/toy-sdxl"],
            "--pipeline controlnet needs --control-image",
        ),  # only tiny has a default
    ],
)
def test_bad_option_combinations_are_refused(argument, named, capsys):
    with pytest.raises(SystemExit):
        compare.parse_args(argument)
    assert named in capsys.readouterr().err


@pytest.mark.slow
def test_sdxl_seg_choice_forwards_the_seg_options_to_its_pipeline():
    from pipeline.pipeline_sdxl_seg import PLADISStableDiffusionXLSEGPipeline

    args = compare.parse_args(
        [
            *TINY,
            "--pipeline",
            "sdxl-seg",
            "--seg-scale",
            "3",
            "--seg-blur-sigma",
            "100",
            "--seg-layers",
            "mid",
            "--scales",
            "2",
            "--steps",
            "1",
        ]
    )
    images, labels = compare.generate_panels(args)
    assert labels == ["SEG 3 + CFG 5 + PLADIS scale=2"]  # the panel names its guidance: SEG, with CFG 5
    pipe = PLADISStableDiffusionXLSEGPipeline.from_pretrained(
        str(assets.ASSET_DIR / "tiny-sdxl"), local_files_only=True
    )
    call = {"num_inference_steps": 1, "height": 64, "width": 64, "pladis_scale": 2.0}
    with_seg = pipe(
        args.prompt,
        seg_scale=3.0,
        seg_blur_sigma=100.0,
        seg_applied_layers=["mid"],
        generator=loading.seeded_generator(0),
        **call,
    ).images[0]
    without_seg = pipe(args.prompt, generator=loading.seeded_generator(0), **call).images[0]
    np.testing.assert_array_equal(np.asarray(images[0]), np.asarray(with_seg))
    assert not np.array_equal(np.asarray(with_seg), np.asarray(without_seg))  # SEG really acted


@pytest.mark.slow
def test_controlnet_choice_shows_the_preprocessed_control_image_first(tmp_path):
    from pipeline.pipeline_controlnet import PLADISStableDiffusionXLControlNetPipeline
    from scripts.cli.preprocess import PREPROCESSORS

    path = compare.main(
        ["--pipeline", "controlnet", "--preprocess", "canny", "--steps", "1", "--out", str(tmp_path / "controlnet.png")]
    )
    control, plain, boosted = panels_of(path, 3)
    expected_control = PREPROCESSORS["canny"](Image.open(assets.REPO_ROOT / assets.TINY_CONTROL_IMAGE).convert("RGB"))
    np.testing.assert_array_equal(control, np.asarray(expected_control.convert("RGB")))
    pipe = PLADISStableDiffusionXLControlNetPipeline.from_pretrained(
        str(assets.ASSET_DIR / "tiny-sdxl-controlnet"), local_files_only=True
    )
    prompt = compare.parse_args(["--pipeline", "controlnet"]).prompt
    expected = pipe(
        prompt,
        image=expected_control,
        num_inference_steps=1,
        height=64,
        width=64,
        generator=loading.seeded_generator(0),
    ).images[0]
    np.testing.assert_array_equal(plain, np.asarray(expected))
    assert np.abs(plain.astype(int) - boosted).max() > 0
    settings = json.loads(path.with_suffix(".json").read_text())
    assert settings["arguments"]["control_image"] == assets.repository_relative(assets.TINY_CONTROL_IMAGE)
    assert settings["panels"][0] == "control image (canny)"


@pytest.mark.slow
def test_flux_choice_runs_the_tiny_flux_and_scale_zero_is_stock_flux():
    from diffusers import FluxPipeline

    args = compare.parse_args(["--pipeline", "flux", "--steps", "1"])
    images, labels = compare.generate_panels(args)
    assert labels == ["FLUX guidance 3.5 (no PLADIS)", "FLUX guidance 3.5 + PLADIS scale=2"]
    stock = FluxPipeline.from_pretrained(str(assets.ASSET_DIR / "tiny-flux-schnell"), local_files_only=True)
    expected = stock(
        args.prompt,
        num_inference_steps=1,
        guidance_scale=3.5,
        height=64,
        width=64,
        generator=loading.seeded_generator(0),
    ).images[0]
    np.testing.assert_array_equal(np.asarray(images[0]), np.asarray(expected))
    assert np.abs(np.asarray(images[0]).astype(int) - np.asarray(images[1])).max() > 0


@pytest.mark.parametrize(
    "argument,message",
    [
        (["--lora", "/nonexistent/lora.safetensors"], "--lora: no such file"),
        (["--pipeline", "controlnet", "--control-image", "/nonexistent.png"], "--control-image: no such file"),
        (["--model", "/nonexistent-folder"], "--model: no such local folder"),
        (["--model", "./missing/model"], "--model: no such local folder"),
    ],
)
def test_missing_files_are_named_before_any_loading(argument, message, capsys, tmp_path):
    with pytest.raises(SystemExit):
        compare.main([*argument, "--out", str(tmp_path / "grid.png")])
    assert message in capsys.readouterr().err
    assert not (tmp_path / "grid.png").exists()


def test_a_bad_pladis_kernel_is_a_usage_error_before_anything_loads(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("PLADIS_KERNEL", "fastest")
    with pytest.raises(SystemExit) as exit_info:
        compare.main(["--out", str(tmp_path / "grid.png")])
    assert exit_info.value.code == 2
    assert "PLADIS_KERNEL must be one of auto, triton, torch" in capsys.readouterr().err
    assert not (tmp_path / "grid.png").exists()


@pytest.mark.parametrize(
    "asset, folder_name, steps",
    [
        ("tiny-flux-schnell", "my-flux", 4),  # no guidance embedding: timestep-distilled, whatever the name
        ("tiny-flux-dev", "flux-schnell-finetune", 28),  # guidance embedding: the dev step count, whatever the name
    ],
)
def test_flux_default_steps_come_from_the_transformer_config_not_the_name(tmp_path, asset, folder_name, steps):
    import shutil

    model = tmp_path / folder_name
    shutil.copytree(assets.ASSET_DIR / asset, model)
    args = compare.parse_args(["--pipeline", "flux", "--model", str(model), "--out", str(tmp_path / "grid.png")])
    assert args.steps == steps
