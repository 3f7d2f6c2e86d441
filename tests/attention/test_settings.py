"""λ/α are checked once where they enter (`PLADISSettings`), never again below: one pipeline call checks them
once however many attention calls it makes, and a processor made by hand checks them when it is made."""

from __future__ import annotations

import dataclasses
import sys

import pytest
import torch
from diffusers import StableDiffusionXLPipeline

import attention.validation
from attention import (
    PLADISAttnProcessor,
    apply_pladis,
    pladis_processors,
    pladis_scaled_dot_product_attention,
    pladis_weights,
    text_block_pladis_attention,
)
from attention.integration.install import settings_in_context
from attention.settings import PLADISSettings
from pipeline.pipeline_flux_pladis import PLADISFluxPipeline
from pipeline.pipeline_sdxl import PLADISStableDiffusionXLPipeline
from pipeline.pipeline_sdxl_seg import PLADISStableDiffusionXLSEGPipeline
from scripts.cli.assets import TINY_FLUX_SCHNELL, TINY_SDXL
from tests.tiny import run_pipe

CHECKS = ("check_pladis_scale", "check_pladis_alpha")


def test_settings_are_frozen_plain_floats():
    settings = PLADISSettings(2, 2)
    assert (type(settings.pladis_scale), type(settings.pladis_alpha)) == (float, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.pladis_scale = -1.0


class CheckCounter:
    """Counts calls of the λ/α checks wherever a module holds them (so a re-check anywhere is counted),
    and of the two kernel seams the processors call."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.checks = {name: 0 for name in CHECKS}
        self.attention_calls = 0
        for name in CHECKS:
            original = getattr(attention.validation, name)
            counting = self._counting(name, original)
            for module in list(sys.modules.values()):
                if getattr(module, name, None) is original:
                    monkeypatch.setattr(module, name, counting)
        rules = sys.modules["attention.integration.attention_calls"]
        for seam in ("pladis_scaled_dot_product_attention", "text_block_pladis_attention"):
            monkeypatch.setattr(rules, seam, self._counted_seam(getattr(rules, seam)))

    def _counting(self, name, original):
        def check(value):
            self.checks[name] += 1
            return original(value)

        return check

    def _counted_seam(self, seam):
        def call(*args, **kwargs):
            self.attention_calls += 1
            return seam(*args, **kwargs)

        return call


@pytest.fixture
def counter(monkeypatch):
    return CheckCounter(monkeypatch)


@pytest.mark.slow  # per pipeline
@pytest.mark.parametrize(
    "pipeline_class,path,kwargs",
    [
        (PLADISStableDiffusionXLPipeline, TINY_SDXL, {}),
        (PLADISStableDiffusionXLSEGPipeline, TINY_SDXL, {"guidance_scale": 1.0, "seg_scale": 3.0}),  # guidance mixin
        (PLADISFluxPipeline, TINY_FLUX_SCHNELL, {"max_sequence_length": 32, "pladis_single_blocks": True}),
    ],
    ids=["sdxl", "sdxl-seg", "flux"],
)
def test_one_pipeline_call_checks_scale_and_alpha_once(counter, pipeline_class, path, kwargs):
    pipe = pipeline_class.from_pretrained(path, local_files_only=True)
    counter.checks = dict.fromkeys(CHECKS, 0)
    run_pipe(pipe, pladis_scale=2.0, pladis_alpha=2.0, **kwargs)
    assert counter.attention_calls >= 4  # several layers × 2 steps, none of which checks again
    assert counter.checks == {"check_pladis_scale": 1, "check_pladis_alpha": 1}


def test_apply_pladis_on_a_bare_denoiser_checks_once(counter, tiny_sdxl_path):
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_path, local_files_only=True)
    counter.checks = dict.fromkeys(CHECKS, 0)
    with apply_pladis(pipe.unet, 2.0):
        run_pipe(pipe)
    assert counter.attention_calls >= 4
    assert counter.checks == {"check_pladis_scale": 1, "check_pladis_alpha": 1}


def test_a_processor_made_by_hand_checks_when_made_not_when_called(counter):
    from diffusers.models.attention_processor import Attention

    attn = Attention(8, cross_attention_dim=6, heads=2, dim_head=4).eval()
    processor = PLADISAttnProcessor(2.0, 1.5)
    assert counter.checks == {"check_pladis_scale": 1, "check_pladis_alpha": 1}
    with torch.no_grad():
        for _ in range(3):
            processor(attn, torch.randn(1, 5, 8), torch.randn(1, 3, 6))
    assert counter.attention_calls == 3
    assert counter.checks == {"check_pladis_scale": 1, "check_pladis_alpha": 1}


def test_the_public_seams_check_once_per_call(counter):
    q = torch.randn(1, 2, 6, 8)
    pladis_scaled_dot_product_attention(q, q, q, 2.0)
    text_block_pladis_attention(q, q, q, 2, 2.0)
    assert counter.checks == {"check_pladis_scale": 2, "check_pladis_alpha": 2}


def test_every_public_entry_taking_lambda_takes_the_settings_object_in_its_place(tiny_sdxl_path):
    """One settings object end to end: what λ/α give, a `PLADISSettings` gives, and it is passed on as it is."""
    settings = PLADISSettings(2.0, 1.75)
    q, k, v = (torch.randn(1, 2, 30, 8, generator=torch.Generator().manual_seed(n)) for n in range(3))
    assert torch.equal(pladis_weights(q @ k.mT, settings), pladis_weights(q @ k.mT, 2.0, 1.75))
    assert torch.equal(
        pladis_scaled_dot_product_attention(q, k, v, settings), pladis_scaled_dot_product_attention(q, k, v, 2.0, 1.75)
    )
    assert torch.equal(
        text_block_pladis_attention(q, k, v, 9, settings), text_block_pladis_attention(q, k, v, 9, 2.0, 1.75)
    )
    assert PLADISAttnProcessor(settings)._fixed.settings is settings
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_path, local_files_only=True)
    assert all(p._fixed.settings is settings for p in pladis_processors(pipe.unet, settings).values())
    with apply_pladis(pipe, settings):
        assert settings_in_context(pipe) is settings
