"""`--pladis-start`, `--pladis-stop`, `--pladis-layers` and compare.py's window and layer sweeps: checked while
parsing (usage errors naming the options, before any model loads), recorded in the settings JSON, replayed by
`--settings`, and each panel the image `apply_pladis` gives with those arguments."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLPipeline
from PIL import Image

from attention import apply_pladis
from scripts import compare
from scripts.cli import checks
from scripts.cli.assets import TINY_FLUX_SCHNELL, TINY_SDXL
from tests.scripts.cli.test_cli_validation import no_model_loads, usage_error  # noqa: F401
from tests.scripts.test_compare_cli import CELL, LABEL


def panels_of(path, count):
    """The 64×64 panels of a one-row grid (each cell at least CELL wide: wider where a label needs it, the
    enlarged image at its left)."""
    grid = np.asarray(Image.open(path).convert("RGB"))
    cell = grid.shape[1] // count
    return [grid[LABEL : LABEL + CELL : 4, index * cell : index * cell + CELL : 4] for index in range(count)]


AUTO = ["--pipeline", "auto", "--model", "asset/tiny-sdxl", "--steps", "2", "--guidance-scale", "5"]


def test_text_attention_names_come_from_the_config_alone():
    sdxl = checks.text_attention_names(str(TINY_SDXL))
    assert sdxl and all(name.endswith(".attn2") for name in sdxl)
    flux = checks.text_attention_names(str(TINY_FLUX_SCHNELL))
    assert any(name.startswith("single_transformer_blocks.") for name in flux)
    assert checks.text_attention_names("no/such-model-here") is None


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--windows", "0:2"], "--windows start and stop must satisfy"),
        (["--windows", "0-1"], "--windows: expected start:stop pairs"),
        (["--layer-sets", "mid;;up_blocks"], "--layer-sets: expected ';'-separated sets"),
        (["--layer-sets", "mid;midd"], "--layer-sets: 'midd' matches no text-attention layer"),
        (["--scales", "0,2", "--windows", "0:1"], "give one sweep: --scales and --windows"),
    ],
)
def test_bad_window_and_layer_options_are_usage_errors_before_loading(argv, message, capsys, no_model_loads):  # noqa: F811
    error = usage_error(compare.main, [*AUTO, *argv], capsys)
    assert message in error, error


@pytest.fixture(scope="module")
def stock():
    pipe = StableDiffusionXLPipeline.from_pretrained(TINY_SDXL, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def image_of(pipe, **pladis) -> np.ndarray:
    """The 64×64 image compare.py makes for the panel with these apply_pladis arguments (λ = 2)."""
    with apply_pladis(pipe, 2.0, **pladis):
        image = pipe(
            prompt="a photo of an astronaut riding a horse on the moon",
            generator=torch.Generator("cpu").manual_seed(0),
            num_inference_steps=2,
            guidance_scale=5.0,
            height=64,
            width=64,
        ).images[0]
    return np.asarray(image)


@pytest.mark.slow  # command-line runs
@pytest.mark.parametrize(
    "sweep,panel_arguments,labels",
    [
        (
            ["--windows", "0:1,0.5:1"],
            [{}, {"pladis_start": 0.5}],
            ["CFG 5 + PLADIS scale=2, steps 0-1", "CFG 5 + PLADIS scale=2, steps 0.5-1"],
        ),
        (
            ["--layer-sets", "mid;up_blocks.0,down_blocks.2"],
            [{"pladis_layers": ["mid"]}, {"pladis_layers": ["up_blocks.0", "down_blocks.2"]}],
            ["CFG 5 + PLADIS scale=2 on mid", "CFG 5 + PLADIS scale=2 on up_blocks.0,down_blocks.2"],
        ),
    ],
)
def test_window_and_layer_sweeps_make_one_panel_each_and_replay_from_their_json(
    stock, tmp_path, sweep, panel_arguments, labels
):
    path = compare.main(
        [
            *AUTO,
            *sweep,
            "--prompt",
            "a photo of an astronaut riding a horse on the moon",
            "--out",
            str(tmp_path / "grid.png"),
        ]
    )
    settings = json.loads(path.with_suffix(".json").read_text())
    assert settings["panels"] == ["CFG 5 (no PLADIS)", *labels]
    panels = panels_of(path, 3)
    for panel, arguments in zip(panels[1:], panel_arguments, strict=True):
        np.testing.assert_array_equal(panel, image_of(stock, **arguments))
    again = compare.main(["--settings", str(path.with_suffix(".json")), "--out", str(tmp_path / "again.png")])
    np.testing.assert_array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(path)))


@pytest.mark.slow
def test_window_and_layers_options_apply_to_every_panel_of_a_scale_sweep(stock, tmp_path):
    path = compare.main(
        [
            *AUTO,
            "--scales",
            "2",
            "--pladis-start",
            "0.5",
            "--pladis-layers",
            "mid",
            "up_blocks.0",
            "--out",
            str(tmp_path / "g.png"),
        ]
    )
    arguments = json.loads(path.with_suffix(".json").read_text())["arguments"]
    assert (arguments["pladis_start"], arguments["pladis_stop"], arguments["pladis_layers"]) == (
        0.5,
        1.0,
        ["mid", "up_blocks.0"],
    )
    (panel,) = panels_of(path, 1)
    np.testing.assert_array_equal(panel, image_of(stock, pladis_start=0.5, pladis_layers=["mid", "up_blocks.0"]))


@pytest.mark.slow  # command-line runs
@pytest.mark.parametrize("pipeline", ["sdxl", "auto"])
def test_attention_maps_generate_with_the_window_and_layers(stock, pipeline):
    """attention_maps.py: the image is the one apply_pladis gives with the options' window and layers (the
    recorders wrap the processors it installed), on a PLADIS pipeline and on the stock one alike."""
    from tqdm.auto import tqdm

    from scripts import attention_maps
    from scripts.cli.loading import load_pipeline

    args = attention_maps.parse_args(
        [
            *AUTO,
            "--pipeline",
            pipeline,
            "--prompt",
            "a photo of an astronaut riding a horse on the moon",
            "--pladis-start",
            "0.5",
            "--pladis-layers",
            "mid",
        ]
    )
    pipe = load_pipeline(args)
    with tqdm(disable=True) as bar:
        image, store, _ = attention_maps.recorded_generation(pipe, args, bar)
    np.testing.assert_array_equal(np.asarray(image), image_of(stock, pladis_start=0.5, pladis_layers=["mid"]))
    assert store.counts  # the maps were recorded


@pytest.mark.slow  # command-line run
def test_a_pladis_pipeline_gets_the_panels_window_and_layers_as_call_keywords(stock, tmp_path):
    """--pipeline sdxl (a PLADIS pipeline): the same panels as the stock pipeline under apply_pladis."""
    path = compare.main(
        [
            *AUTO,
            "--pipeline",
            "sdxl",
            "--prompt",
            "a photo of an astronaut riding a horse on the moon",
            "--windows",
            "0.5:1",
            "--pladis-layers",
            "mid",
            "--out",
            str(tmp_path / "grid.png"),
        ]
    )
    without, windowed = panels_of(path, 2)
    np.testing.assert_array_equal(windowed, image_of(stock, pladis_start=0.5, pladis_layers=["mid"]))
    np.testing.assert_array_equal(without, image_of(stock, pladis_stop=0.0))
