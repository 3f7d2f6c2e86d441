"""`PLADISAttnProcessor` against stock `AttnProcessor2_0` whose SDPA is replaced by a float64
materialised PLADIS built on the `entmax` package: the two may differ only in the attention weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers.models import attention_processor
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from entmax import entmax15

from attention import PLADISAttnProcessor, pladis_scaled_dot_product_attention
from attention.kernels.reference import reference_pladis_sdpa


def reference_sdpa(scale: float, alpha: float):
    """Float64 `(softmax + λ(entmax − softmax))·V` (`attention.kernels.reference`) with SDPA's signature and
    mask semantics."""

    def sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, **unused):
        return reference_pladis_sdpa(query, key, value, scale, alpha, attn_mask, float64=True)

    return sdpa


def reference_output(monkeypatch, attn, scale, alpha, *args, **kwargs):
    with monkeypatch.context() as patch:
        patch.setattr(attention_processor.F, "scaled_dot_product_attention", reference_sdpa(scale, alpha))
        return AttnProcessor2_0()(attn, *args, **kwargs)


def make_attention(query_dim=32, cross_dim=24, heads=4, **kwargs) -> Attention:
    torch.manual_seed(0)
    return Attention(
        query_dim, cross_attention_dim=cross_dim, heads=heads, dim_head=query_dim // heads, **kwargs
    ).eval()


@pytest.mark.parametrize("alpha", [1.5, 2.0])
@pytest.mark.parametrize("scale", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("tokens,text", [(16, 7), (64, 77), (5, 1)])
def test_processor_matches_materialised_reference(monkeypatch, alpha, scale, tokens, text):
    attn = make_attention()
    generator = torch.Generator().manual_seed(tokens + text)
    hidden = torch.randn(2, tokens, 32, generator=generator)
    context = torch.randn(2, text, 24, generator=generator) * 3
    with torch.no_grad():
        ours = PLADISAttnProcessor(scale, alpha)(attn, hidden, context)
        expected = reference_output(monkeypatch, attn, scale, alpha, hidden, context)
    torch.testing.assert_close(ours, expected, atol=2e-5, rtol=1e-4)


def test_processor_handles_spatial_input_residual_and_rescale(monkeypatch):
    attn = make_attention(residual_connection=True, rescale_output_factor=2.0, norm_num_groups=8)
    hidden = torch.randn(2, 32, 4, 6, generator=torch.Generator().manual_seed(5))  # (B, C, H, W)
    context = torch.randn(2, 9, 24, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        ours = PLADISAttnProcessor(2.0)(attn, hidden, context)
        expected = reference_output(monkeypatch, attn, 2.0, 1.5, hidden, context)
    assert ours.shape == hidden.shape
    torch.testing.assert_close(ours, expected, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("boolean", [True, False])
def test_processor_applies_masks_like_sdpa(monkeypatch, boolean):
    attn = make_attention()
    hidden = torch.randn(2, 10, 32, generator=torch.Generator().manual_seed(7))
    context = torch.randn(2, 12, 24, generator=torch.Generator().manual_seed(8))
    keep = torch.ones(2, 1, 12, dtype=torch.bool)
    keep[0, :, 8:] = False
    mask = keep if boolean else torch.zeros(2, 1, 12).masked_fill(~keep, float("-inf"))
    with torch.no_grad():
        ours = PLADISAttnProcessor(2.0)(attn, hidden, context, attention_mask=mask)
        expected = reference_output(monkeypatch, attn, 2.0, 1.5, hidden, context, attention_mask=mask)
        unmasked = PLADISAttnProcessor(2.0)(attn, hidden, context)
    torch.testing.assert_close(ours, expected, atol=2e-5, rtol=1e-4)
    assert not torch.allclose(ours[0], unmasked[0], atol=1e-4)  # the mask really acted
    torch.testing.assert_close(ours[1], unmasked[1])


def test_scale_one_is_pure_entmax_attention():
    q, k, v = (torch.randn(2, 3, n, 8, generator=torch.Generator().manual_seed(n)) for n in (20, 11, 11))
    z = q.double() @ k.double().transpose(-1, -2) / 8**0.5
    expected = entmax15(z, dim=-1) @ v.double()
    ours = pladis_scaled_dot_product_attention(q, k, v, pladis_scale=1.0)
    torch.testing.assert_close(ours.double(), expected, atol=1e-5, rtol=1e-5)


def test_scale_zero_equals_sdpa():
    q, k, v = (torch.randn(2, 3, n, 8, generator=torch.Generator().manual_seed(n)) for n in (20, 11, 11))
    torch.testing.assert_close(
        pladis_scaled_dot_product_attention(q, k, v, 0.0), F.scaled_dot_product_attention(q, k, v)
    )


def test_query_chunking_does_not_change_the_result(monkeypatch):
    q, k, v = (torch.randn(1, 2, n, 8, generator=torch.Generator().manual_seed(n)) for n in (300, 40, 40))
    whole = pladis_scaled_dot_product_attention(q, k, v, 2.0)
    monkeypatch.setattr("attention.kernels.chunked.CROSS_ATTENTION_CHUNK", 2 * 40 * 7)  # 7 query rows per chunk
    torch.testing.assert_close(pladis_scaled_dot_product_attention(q, k, v, 2.0), whole)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_close_to_float32(dtype):
    attn = make_attention()
    hidden = torch.randn(2, 64, 32, generator=torch.Generator().manual_seed(9))
    context = torch.randn(2, 77, 24, generator=torch.Generator().manual_seed(10))
    with torch.no_grad():
        expected = PLADISAttnProcessor(2.0)(attn, hidden, context)
        ours = PLADISAttnProcessor(2.0)(attn.to(dtype), hidden.to(dtype), context.to(dtype))
    assert ours.dtype == dtype
    torch.testing.assert_close(ours.float(), expected, atol=0.05, rtol=0.05)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_finite_with_extreme_logits_and_masks(dtype):
    attn = make_attention().to(dtype)
    hidden = (torch.randn(2, 64, 32, generator=torch.Generator().manual_seed(9)) * 30).to(dtype)
    context = (torch.randn(2, 77, 24, generator=torch.Generator().manual_seed(10)) * 30).to(dtype)
    mask = torch.zeros(2, 1, 77, dtype=dtype)
    mask[:, :, 40:] = float("-inf")
    mask[1] = float("-inf")  # a fully masked batch row
    with torch.no_grad():
        out = PLADISAttnProcessor(3.0)(attn, hidden, context, attention_mask=mask)
    assert torch.isfinite(out).all()


def test_fully_masked_rows_do_not_produce_nan():
    attn = make_attention()
    hidden = torch.randn(1, 6, 32)
    context = torch.randn(1, 5, 24)
    mask = torch.zeros(1, 1, 5, dtype=torch.bool)  # nothing to attend to
    with torch.no_grad():
        out = PLADISAttnProcessor(2.0)(attn, hidden, context, attention_mask=mask)
    assert torch.isfinite(out).all()
