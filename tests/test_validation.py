"""Bad PLADIS arguments fail before any work, name the argument, and leave the pipeline usable."""

from __future__ import annotations

import math

import numpy as np
import pytest

from attention import PLADISAttnProcessor, apply_pladis
from attention.validation import MAX_PLADIS_SCALE, check_pladis_alpha, check_pladis_scale
from pipeline.pipeline_sdxl import PLADISStableDiffusionXLPipeline
from tests.tiny import CallCounter, processors_by_name, run_pipe, same_processor_objects

BAD_SCALES = [
    (-0.5, ValueError),
    (math.nan, ValueError),
    (math.inf, ValueError),
    (-math.inf, ValueError),
    (MAX_PLADIS_SCALE * 1.001, ValueError),  # beyond it half-precision attention overflows
    (1e6, ValueError),
    (1e30, ValueError),
    (1.7e308, ValueError),
    ("2.0", TypeError),
    (None, TypeError),
    (True, TypeError),
    ([2.0], TypeError),
]
BAD_ALPHAS = [
    (1.0, ValueError),
    (0.5, ValueError),
    (2.5, ValueError),
    (math.nan, ValueError),
    ("1.5", TypeError),
    (None, TypeError),
]


@pytest.mark.parametrize("value,error", BAD_SCALES)
def test_bad_scale_is_rejected_naming_the_argument(value, error):
    for check in (check_pladis_scale, PLADISAttnProcessor):
        with pytest.raises(error, match="pladis_scale"):
            check(value)


@pytest.mark.parametrize("value,error", BAD_ALPHAS)
def test_bad_alpha_is_rejected_naming_the_argument(value, error):
    with pytest.raises(error, match="pladis_alpha"):
        check_pladis_alpha(value)
    with pytest.raises(error, match="pladis_alpha"):
        PLADISAttnProcessor(2.0, value)


def test_an_out_of_range_scale_names_the_accepted_range():
    with pytest.raises(ValueError, match=r"pladis_scale must be in \[0, 100\].*got 1000000.0"):
        check_pladis_scale(1e6)


@pytest.mark.parametrize("value", [0, 2, 1.5, np.float32(2.0), MAX_PLADIS_SCALE])
def test_numeric_scales_are_accepted(value):
    assert check_pladis_scale(value) == float(value)


def test_alpha_two_is_accepted():
    assert check_pladis_alpha(2) == 2.0


@pytest.fixture
def pipe(tiny_sdxl_path):
    return PLADISStableDiffusionXLPipeline.from_pretrained(tiny_sdxl_path, local_files_only=True)


@pytest.mark.parametrize(
    "kwargs,error,name",
    [
        ({"pladis_scale": -1.0}, ValueError, "pladis_scale"),
        ({"pladis_scale": math.nan}, ValueError, "pladis_scale"),
        ({"pladis_scale": "big"}, TypeError, "pladis_scale"),
        ({"pladis_scale": 1e6}, ValueError, "pladis_scale"),
        ({"pladis_scale": 2.0, "pladis_alpha": 1.0}, ValueError, "pladis_alpha"),
        ({"pladis_scale": 0.0, "pladis_alpha": 3.0}, ValueError, "pladis_alpha"),  # checked even when off
    ],
)
def test_pipeline_rejects_bad_arguments_before_any_work(pipe, kwargs, error, name):
    before = processors_by_name(pipe.unet)
    counter = CallCounter(pipe.unet)
    with pytest.raises(error, match=name):
        run_pipe(pipe, **kwargs)
    counter.remove()
    assert counter.count == 0
    assert same_processor_objects(pipe.unet, before)
    assert np.isfinite(run_pipe(pipe, pladis_scale=2.0)).all()


def test_apply_pladis_rejects_objects_without_denoiser():
    with pytest.raises(TypeError, match="unet.*transformer"):
        with apply_pladis(object(), 2.0):
            pass


def test_apply_pladis_without_controlnet_raises(pipe):
    with pytest.raises(ValueError, match="pladis_controlnet"):
        with apply_pladis(pipe, 2.0, pladis_controlnet=True):
            pass
