"""Shared fixtures: the tiny saved pipelines in `asset/`, loaded with `from_pretrained` offline."""

from __future__ import annotations

import pytest
import torch
from diffusers.utils import logging as diffusers_logging

from scripts.build_tiny_assets import TINY_SDXL

diffusers_logging.disable_progress_bar()
torch.set_num_threads(1)  # tiny models: one thread is fastest, and robust on a loaded machine


@pytest.fixture
def tiny_sdxl_path():
    return TINY_SDXL
