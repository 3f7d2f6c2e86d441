"""PLADIS with `enable_attention_slicing`: slicing sets `SlicedAttnProcessor` on every layer; PLADIS replaces it
on the cross-attention layers for the call (its own query chunking already bounds memory), so the image is
the unsliced PLADIS image, self-attention stays sliced, and the sliced processors are restored afterwards.
xformers' processors (what `enable_xformers_memory_efficient_attention` sets) are replaced the same way."""

from __future__ import annotations

import numpy as np
import pytest
from diffusers.models.attention_processor import SlicedAttnProcessor, XFormersAttnProcessor

from attention import PLADISAttnProcessor, apply_pladis
from tests.family_runs import build, layers_of_type, one_thread, processors_seen, run_family  # noqa: F401
from tests.tiny import processors_by_name, same_processor_objects


@pytest.mark.slow
@pytest.mark.parametrize("slice_size", ["auto", 1])
def test_sliced_pipeline_gets_pladis_and_its_slicing_back(slice_size):
    pipe = build("sd15")
    stock = run_family(pipe, "sd15")
    with apply_pladis(pipe, 2.0):
        pladis = run_family(pipe, "sd15")
    pipe.enable_attention_slicing(slice_size)
    np.testing.assert_allclose(run_family(pipe, "sd15"), stock, atol=1e-5)
    before = processors_by_name(pipe.unet)
    with apply_pladis(pipe, 2.0), processors_seen(pipe.unet) as seen:
        sliced = run_family(pipe, "sd15")
    np.testing.assert_allclose(sliced, pladis, atol=1e-5)  # PLADIS took effect, slicing changes nothing
    cross = {name for name in (key[: -len(".processor")] for key in seen) if name.endswith(".attn2")}
    assert layers_of_type(seen, PLADISAttnProcessor) == cross
    assert layers_of_type(seen, SlicedAttnProcessor) == {key[: -len(".processor")] for key in seen} - cross
    assert same_processor_objects(pipe.unet, before)
    pipe.disable_attention_slicing()
    np.testing.assert_allclose(run_family(pipe, "sd15"), stock, atol=1e-5)


def test_xformers_processors_are_replaced_on_cross_attention_and_restored():
    """xformers is not installed here, so this checks the installation, not a run."""
    pipe = build("sd15")
    pipe.unet.set_attn_processor(XFormersAttnProcessor())
    before = processors_by_name(pipe.unet)
    with apply_pladis(pipe, 2.0):
        during = dict(pipe.unet.attn_processors)
    cross = {key[: -len(".processor")] for key in during if key.endswith(".attn2.processor")}
    assert layers_of_type(during, PLADISAttnProcessor) == cross and len(cross) == 4
    assert layers_of_type(during, XFormersAttnProcessor) == {key[: -len(".processor")] for key in during} - cross
    assert same_processor_objects(pipe.unet, before)
