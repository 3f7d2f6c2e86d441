"""Every example in `scripts/examples/` runs on the tiny assets (`--tiny`, one step) and writes its grid:
two labelled panels, without and with PLADIS, that differ."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

EXAMPLES = sorted(
    path.stem
    for path in (Path(__file__).resolve().parents[3] / "scripts" / "examples").glob("*.py")
    if path.stem != "__init__"
)
REFERENCE_SECTIONS = {
    "sdxl_cfg",
    "sdxl_pag",
    "sdxl_seg",
    "sdxl_freeu",
    "sdxl_dmd2",
    "sdxl_lightning",
    "hyper_sdxl",
    "flux_schnell",
    "flux_dev",
    "controlnet_depth",
}
# One model across GPUs (tests/attention/integration/test_context_parallel.py runs it so).
BEYOND_THE_REFERENCE = {"flux_dev_many_gpus"}
LABEL_HEIGHT, PANEL = 24, 256  # scripts/cli/grid.py: a label strip, tiny images enlarged to 256 px


def test_there_is_one_example_per_reference_section():
    assert set(EXAMPLES) == REFERENCE_SECTIONS | BEYOND_THE_REFERENCE


@pytest.mark.slow  # every example, end to end
@pytest.mark.parametrize("name", EXAMPLES)
def test_example_runs_on_tiny_assets_and_writes_its_grid(name, tmp_path):
    out = tmp_path / f"{name}.png"
    example = importlib.import_module(f"scripts.examples.{name}")
    assert example.main(["--tiny", "--steps", "1", "--device", "cpu", "--out", str(out)]) == out
    grid = np.asarray(Image.open(out).convert("RGB"))
    cell = grid.shape[1] // 2
    without, with_pladis = (grid[LABEL_HEIGHT : LABEL_HEIGHT + PANEL, i * cell : i * cell + PANEL] for i in (0, 1))
    assert grid.shape[0] > LABEL_HEIGHT + PANEL  # the caption lies below the panels
    assert np.abs(without.astype(int) - with_pladis.astype(int)).max() > 0  # PLADIS changed the image


def test_tiny_switch_keeps_explicit_options(tmp_path):
    from scripts.cli.recipes import example_parser, parse_example_args

    parser = example_parser("test", model="some/model", steps=25, guidance_scale=5.0, lora="a/b/c.safetensors")
    args = parse_example_args(parser, ["--tiny", "--steps", "3"], name="test")
    assert args.steps == 3 and (args.height, args.width) == (64, 64)
    assert Path(args.model).name == "tiny-sdxl" and args.lora.endswith("pytorch_lora_weights.safetensors")
    assert args.out == Path("outputs/examples/test.png")
    with pytest.raises(SystemExit):
        parse_example_args(parser, ["--pladis-scale", "-1"], name="test")
