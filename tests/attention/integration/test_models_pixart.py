"""`apply_pladis` on PixArt-Σ (`PixArtTransformer2DModel`, `BasicTransformerBlock.attn2`): identity at λ = 0,
PLADIS on the cross-attention only, the text padding mask honoured, unchanged transformer calls."""

from __future__ import annotations

import numpy as np
import pytest
from diffusers.models.attention_processor import AttnProcessor2_0

from attention import PLADISAttnProcessor, apply_pladis
from tests.family_runs import build, layers_of_type, one_thread, processors_seen, run_family  # noqa: F401
from tests.tiny import CallCounter, processors_by_name, same_processor_objects


@pytest.fixture(scope="module")
def pipe():
    return build("pixart")


def test_scale_zero_is_bit_identical_to_the_stock_pipeline(pipe):
    stock = run_family(pipe, "pixart")
    with apply_pladis(pipe, 0.0):
        np.testing.assert_array_equal(run_family(pipe, "pixart"), stock)


@pytest.mark.parametrize("alpha", [1.5, 2.0])
def test_positive_scale_changes_the_image(pipe, alpha):
    stock = run_family(pipe, "pixart")
    with apply_pladis(pipe, 2.0, alpha):
        boosted = run_family(pipe, "pixart")
    assert np.isfinite(boosted).all() and np.abs(boosted - stock).max() > 1e-3


def test_pladis_goes_on_the_cross_attention_only(pipe):
    with apply_pladis(pipe, 2.0), processors_seen(pipe.transformer) as seen:
        run_family(pipe, "pixart")
    assert layers_of_type(seen, PLADISAttnProcessor) == {"transformer_blocks.0.attn2", "transformer_blocks.1.attn2"}
    assert layers_of_type(seen, AttnProcessor2_0) == {"transformer_blocks.0.attn1", "transformer_blocks.1.attn1"}


@pytest.mark.parametrize("pladis_scale", [0.0, 2.0])
def test_padding_tokens_are_masked_out(pipe, pladis_scale):
    """PixArt pads the prompt to `max_sequence_length` and masks the padding: more padding, same image."""
    with apply_pladis(pipe, pladis_scale):
        short = run_family(pipe, "pixart", max_sequence_length=12)
        long = run_family(pipe, "pixart", max_sequence_length=40)
    np.testing.assert_allclose(short, long, atol=1e-5)


def test_transformer_calls_unchanged_and_processors_restored(pipe):
    before = processors_by_name(pipe.transformer)
    counter = CallCounter(pipe.transformer)
    run_family(pipe, "pixart", num_inference_steps=3)
    with apply_pladis(pipe, 2.0):
        run_family(pipe, "pixart", num_inference_steps=3)
    counter.remove()
    assert counter.count == 2 * 3
    assert same_processor_objects(pipe.transformer, before)
