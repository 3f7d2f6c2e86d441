"""What the commands print is theirs: the known library warnings every run would repeat (transformers without
torchvision, a distilled LoRA without text-encoder weights) are silenced, other warnings are not; and the
benchmark reports its progress while it measures."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from argparse import Namespace
from pathlib import Path

import pytest

from scripts.cli import quiet

ROOT = Path(__file__).resolve().parents[3]

_WITHOUT_TORCHVISION = """
import importlib.util, sys
find_spec = importlib.util.find_spec
hidden = lambda name, *rest: None if name.partition(".")[0] == "torchvision" else find_spec(name, *rest)
importlib.util.find_spec = hidden
sys.modules["torchvision"] = None  # as in a `[dev]` install, which has no torchvision
import transformers
transformers.CLIPImageProcessor  # before the scripts are imported: transformers warns
import scripts
transformers.SiglipImageProcessor  # after: silenced
"""


class Recorded(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.mark.slow  # subprocess
def test_the_torchvision_fallback_warning_is_silenced_once_the_scripts_are_imported():
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_TORCHVISION], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"`CLIPImageProcessor` {quiet.TORCHVISION_FALLBACK}" in result.stderr  # the real warning, as matched
    assert "SiglipImageProcessor" not in result.stderr


def test_the_filters_drop_only_their_message():
    logger = logging.getLogger("pladis.test.quiet")
    recorded = Recorded()
    logger.addHandler(recorded)
    dropped = quiet.DroppedMessage(quiet.TEXT_ENCODER_WITHOUT_LORA)
    logger.addFilter(dropped)
    try:
        logger.warning("No LoRA keys associated to CLIPTextModel found with the prefix='text_encoder'.")
        logger.warning("No weights found for the UNet")
    finally:
        logger.removeFilter(dropped)
        logger.removeHandler(recorded)
    assert recorded.messages == ["No weights found for the UNet"]


@pytest.mark.slow
def test_loading_a_unet_only_lora_says_nothing_about_text_encoders():
    from diffusers.utils import logging as diffusers_logging

    from scripts.cli.assets import TINY_SDXL, TINY_SDXL_LORA
    from scripts.cli.loading import fuse_lora_file, load_pipeline

    pipe = load_pipeline(
        Namespace(pipeline="sdxl", model=str(TINY_SDXL), dtype="float32", device="cpu", lora=None, scheduler=None)
    )
    recorded = Recorded()
    logger = logging.getLogger("diffusers.loaders.lora_base")
    logger.addHandler(recorded)
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_warning()
    try:
        fuse_lora_file(pipe, TINY_SDXL_LORA)
        logger.warning("No LoRA keys associated to CLIPTextModel (after the load: not silenced)")
    finally:
        logger.removeHandler(recorded)
        diffusers_logging.set_verbosity(verbosity)
    assert recorded.messages == ["No LoRA keys associated to CLIPTextModel (after the load: not silenced)"]


def test_the_benchmark_reports_each_round_and_each_variant_with_min_median_max(capsys):
    from scripts.dev import benchmark

    durations = {"stock": [0.003, 0.001, 0.002], "pladis": [0.004, 0.006, 0.005]}
    runs = {name: (lambda values=values: time.sleep(values.pop(0))) for name, values in durations.items()}
    args = Namespace(warmup=0, repeats=3, device="cpu")
    medians = benchmark.median_times(runs, args, "toy-case")
    lines = capsys.readouterr().err.splitlines()
    assert [line for line in lines if "timed round" in line] == [
        f"[benchmark] toy-case: timed round {number}/3" for number in (1, 2, 3)
    ]
    stats = [line for line in lines if "min / median / max" in line]
    assert len(stats) == 2 and stats[0].startswith("[benchmark] toy-case: stock ms min / median / max: ")
    low, middle, high = (float(value) for value in stats[0].split(": ")[-1].split(" (")[0].split(" / "))
    assert low <= middle <= high and abs(middle - medians["stock"] * 1e3) < 0.01
