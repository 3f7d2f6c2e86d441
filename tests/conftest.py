"""Shared fixtures: the tiny saved pipelines in `asset/`, loaded with `from_pretrained` offline."""

from __future__ import annotations

import os

# Device-aware tests run on PLADIS_TEST_DEVICE; on CPU the Triton kernels run in Triton's interpreter,
# which must be chosen before anything imports triton.
TEST_DEVICE_NAME = os.environ.get("PLADIS_TEST_DEVICE", "cpu")
if TEST_DEVICE_NAME == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch
from diffusers.utils import logging as diffusers_logging

from scripts.cli.assets import TINY_SDXL

diffusers_logging.disable_progress_bar()
TEST_DEVICE = torch.device(TEST_DEVICE_NAME)
torch.set_num_threads(1)  # tiny models: one thread is fastest, and robust on a loaded machine


@pytest.fixture
def tiny_sdxl_path():
    return TINY_SDXL


@pytest.fixture
def device() -> torch.device:
    """The device of the device-aware tests: `PLADIS_TEST_DEVICE` (default cpu; `cuda` on a GPU machine)."""
    if TEST_DEVICE.type == "cuda" and not torch.cuda.is_available():
        pytest.skip("PLADIS_TEST_DEVICE=cuda but no CUDA device is available")
    return TEST_DEVICE
