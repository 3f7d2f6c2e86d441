"""The values the PLADIS checks accept, and `apply_pladis` on what it cannot act on (the bad values of every
entry point: tests/project/test_bad_values.py)."""

from __future__ import annotations

import numpy as np
import pytest

from attention import apply_pladis
from attention.validation import MAX_PLADIS_SCALE, check_pladis_alpha, check_pladis_scale
from pipeline.pipeline_sdxl import PLADISStableDiffusionXLPipeline


@pytest.mark.parametrize("value", [0, 2, 1.5, np.float32(2.0), MAX_PLADIS_SCALE])
def test_numeric_scales_are_accepted(value):
    assert check_pladis_scale(value) == float(value)


def test_alpha_two_is_accepted():
    assert check_pladis_alpha(2) == 2.0


@pytest.fixture
def pipe(tiny_sdxl_path):
    return PLADISStableDiffusionXLPipeline.from_pretrained(tiny_sdxl_path, local_files_only=True)


def test_apply_pladis_rejects_objects_without_denoiser():
    with pytest.raises(TypeError, match="unet.*transformer"):
        with apply_pladis(object(), 2.0):
            pass


def test_apply_pladis_without_controlnet_raises(pipe):
    with pytest.raises(ValueError, match="pladis_controlnet"):
        with apply_pladis(pipe, 2.0, pladis_controlnet=True):
            pass
