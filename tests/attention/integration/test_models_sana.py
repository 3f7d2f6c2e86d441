"""`PLADISSanaAttnProcessor` and `apply_pladis` on SANA: the processor against stock `SanaAttnProcessor2_0`
with a float64 materialised PLADIS SDPA (q/k norms across heads, masks), and the pipeline: PLADIS on the
softmax cross-attention only (the linear self-attention is left alone), the padding mask honoured."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, SanaLinearAttnProcessor2_0
from diffusers.models.transformers.sana_transformer import SanaAttnProcessor2_0

from attention import PLADISSanaAttnProcessor, apply_pladis
from tests.attention.integration.test_processor import reference_sdpa
from tests.family_runs import build, layers_of_type, one_thread, processors_seen, run_family  # noqa: F401
from tests.tiny import CallCounter, processors_by_name, same_processor_objects


def sana_cross_attention(qk_norm: str | None) -> Attention:
    """A SANA-style cross-attention layer (as `SanaTransformerBlock` builds it), random weights."""
    torch.manual_seed(0)
    return Attention(
        query_dim=16,
        qk_norm=qk_norm,
        kv_heads=2 if qk_norm else None,
        cross_attention_dim=12,
        heads=2,
        dim_head=8,
        bias=True,
        processor=SanaAttnProcessor2_0(),
    ).eval()


def padding_mask(batch: int, keys: int, kept: list[int], boolean: bool) -> torch.Tensor:
    """(batch, 1, keys) text mask keeping the first `kept[i]` keys: bool, or SANA's additive −10000 bias."""
    keep = torch.arange(keys)[None, None, :] < torch.tensor(kept)[:, None, None]
    return keep if boolean else (1 - keep.float()) * -10000.0


@pytest.mark.parametrize("qk_norm", [None, "rms_norm_across_heads"])
@pytest.mark.parametrize("alpha", [1.5, 2.0])
@pytest.mark.parametrize("mask", [None, "bias", "bool"])
def test_processor_matches_materialised_reference(monkeypatch, qk_norm, alpha, mask):
    attn = sana_cross_attention(qk_norm)
    generator = torch.Generator().manual_seed(7)
    hidden, context = torch.randn(2, 20, 16, generator=generator), torch.randn(2, 9, 12, generator=generator) * 3
    attention_mask = None if mask is None else padding_mask(2, 9, [9, 4], boolean=mask == "bool")
    with torch.no_grad():
        ours = PLADISSanaAttnProcessor(2.0, alpha)(attn, hidden, context, attention_mask=attention_mask)
        with monkeypatch.context() as patch:
            patch.setattr(F, "scaled_dot_product_attention", reference_sdpa(2.0, alpha))
            expected = SanaAttnProcessor2_0()(attn, hidden, context, attention_mask=attention_mask)
    torch.testing.assert_close(ours, expected, atol=2e-5, rtol=1e-4)


@pytest.fixture(scope="module")
def pipe():
    return build("sana")


def test_scale_zero_is_bit_identical_to_the_stock_pipeline(pipe):
    stock = run_family(pipe, "sana")
    with apply_pladis(pipe, 0.0):
        np.testing.assert_array_equal(run_family(pipe, "sana"), stock)


@pytest.mark.parametrize("alpha", [1.5, 2.0])
def test_positive_scale_changes_the_image(pipe, alpha):
    stock = run_family(pipe, "sana")
    with apply_pladis(pipe, 2.0, alpha):
        boosted = run_family(pipe, "sana")
    assert np.isfinite(boosted).all() and np.abs(boosted - stock).max() > 1e-3


def test_pladis_goes_on_the_cross_attention_only(pipe):
    with apply_pladis(pipe, 2.0), processors_seen(pipe.transformer) as seen:
        run_family(pipe, "sana")
    assert layers_of_type(seen, PLADISSanaAttnProcessor) == {"transformer_blocks.0.attn2", "transformer_blocks.1.attn2"}
    linear_self_attention = {"transformer_blocks.0.attn1", "transformer_blocks.1.attn1"}
    assert layers_of_type(seen, SanaLinearAttnProcessor2_0) == linear_self_attention


@pytest.mark.parametrize("pladis_scale", [0.0, 2.0])
def test_padding_tokens_are_masked_out(pipe, pladis_scale):
    with apply_pladis(pipe, pladis_scale):
        short = run_family(pipe, "sana", max_sequence_length=12)
        long = run_family(pipe, "sana", max_sequence_length=40)
    np.testing.assert_allclose(short, long, atol=1e-5)


def test_transformer_calls_unchanged_and_processors_restored(pipe):
    before = processors_by_name(pipe.transformer)
    counter = CallCounter(pipe.transformer)
    run_family(pipe, "sana", num_inference_steps=3)
    with apply_pladis(pipe, 2.0):
        run_family(pipe, "sana", num_inference_steps=3)
    counter.remove()
    assert counter.count == 2 * 3
    assert same_processor_objects(pipe.transformer, before)
