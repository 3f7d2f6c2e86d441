"""`PLADISFluxAttnProcessor` against stock `FluxAttnProcessor` whose `dispatch_attention_fn` is replaced
by a float64 materialised text-block rule: the two may differ only in the attention weights."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.transformers import transformer_flux
from diffusers.models.transformers.transformer_flux import FluxAttention, FluxAttnProcessor, FluxPosEmbed

from attention import PLADISFluxAttnProcessor, TextLength, recorded_text_length
from tests.attention.kernels.test_flux_rule import materialised_weights, relative_error

DIM, HEADS, HEAD_DIM = 32, 2, 16


def reference_dispatch(text_length: int, scale: float, alpha: float):
    """Float64 materialised rule with `dispatch_attention_fn`'s (B, S, H, D) layout."""

    def dispatch(query, key, value, attn_mask=None, **unused):
        q, k, v = (x.transpose(1, 2) for x in (query, key, value))
        weights = materialised_weights(q, k, text_length, scale, alpha)
        return (weights @ v.double()).transpose(1, 2).to(query.dtype)

    return dispatch


def reference_output(monkeypatch, text_length, scale, alpha, attn, *args, **kwargs):
    with monkeypatch.context() as patch:
        patch.setattr(transformer_flux, "dispatch_attention_fn", reference_dispatch(text_length, scale, alpha))
        return FluxAttnProcessor()(attn, *args, **kwargs)


def double_stream_attention() -> FluxAttention:
    torch.manual_seed(0)
    return FluxAttention(
        query_dim=DIM,
        added_kv_proj_dim=DIM,
        dim_head=HEAD_DIM,
        heads=HEADS,
        out_dim=DIM,
        context_pre_only=False,
        bias=True,
        eps=1e-6,
    ).eval()


def single_stream_attention() -> FluxAttention:
    torch.manual_seed(1)
    return FluxAttention(
        query_dim=DIM, dim_head=HEAD_DIM, heads=HEADS, out_dim=DIM, bias=True, eps=1e-6, pre_only=True
    ).eval()


def rotary_embedding(text_length: int, side: int):
    """FLUX's RoPE for `text_length` text ids (all zero) followed by a side×side image grid."""
    image_ids = torch.zeros(side, side, 3)
    image_ids[..., 1] = torch.arange(side)[:, None]
    image_ids[..., 2] = torch.arange(side)[None, :]
    ids = torch.cat([torch.zeros(text_length, 3), image_ids.reshape(-1, 3)])
    return FluxPosEmbed(theta=10000, axes_dim=[4, 4, 8])(ids)


def inputs(text_length: int, side: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    image = torch.randn(2, side * side, DIM, generator=generator) * 3
    text = torch.randn(2, text_length, DIM, generator=generator) * 3
    return image, text, rotary_embedding(text_length, side)


@pytest.mark.parametrize("alpha", [1.5, 2.0])
@pytest.mark.parametrize("text_length,side", [(8, 4), (32, 6)])
def test_double_stream_matches_stock_processor_with_materialised_rule(monkeypatch, alpha, text_length, side):
    attn = double_stream_attention()
    image, text, rope = inputs(text_length, side, seed=text_length)
    with torch.no_grad():
        ours = PLADISFluxAttnProcessor(2.0, alpha)(attn, image, text, image_rotary_emb=rope)
        expected = reference_output(monkeypatch, text_length, 2.0, alpha, attn, image, text, image_rotary_emb=rope)
        stock = FluxAttnProcessor()(attn, image, text, image_rotary_emb=rope)
    for got, want, _dense in zip(ours, expected, stock, strict=True):
        assert got.shape == want.shape
        assert relative_error(got, want.double()) < 1e-5
    assert relative_error(ours[0], stock[0].double()) > 1e-3  # image tokens change
    torch.testing.assert_close(ours[1], stock[1], atol=1e-5, rtol=1e-5)  # text-query rows stay dense


def test_single_stream_reads_the_recorded_text_length(monkeypatch):
    attn = single_stream_attention()
    image, text, rope = inputs(8, 5, seed=3)
    joint = torch.cat([text, image], dim=1)
    recorded = TextLength()
    recorded.tokens = 8
    with torch.no_grad():
        ours = PLADISFluxAttnProcessor(2.0, text_length=recorded)(attn, joint, image_rotary_emb=rope)
        expected = reference_output(monkeypatch, 8, 2.0, 1.5, attn, joint, image_rotary_emb=rope)
        recorded.tokens = 12  # a wrong length must give a different result
        wrong = PLADISFluxAttnProcessor(2.0, text_length=recorded)(attn, joint, image_rotary_emb=rope)
    assert relative_error(ours, expected.double()) < 1e-5
    assert relative_error(wrong, expected.double()) > 1e-3


def test_single_stream_without_a_recorded_text_length_raises_instead_of_guessing():
    attn = single_stream_attention()
    image, text, rope = inputs(8, 4, seed=4)
    joint = torch.cat([text, image], dim=1)
    for processor in (PLADISFluxAttnProcessor(2.0), PLADISFluxAttnProcessor(2.0, text_length=TextLength())):
        with pytest.raises(RuntimeError, match="pladis_single_blocks=True"):
            processor(attn, joint, image_rotary_emb=rope)


def test_fused_projections_give_the_same_output():
    attn = double_stream_attention()
    image, text, rope = inputs(8, 4, seed=5)
    processor = PLADISFluxAttnProcessor(2.0)
    with torch.no_grad():
        separate = processor(attn, image, text, image_rotary_emb=rope)
        attn.fuse_projections()
        assert attn.fused_projections
        fused = processor(attn, image, text, image_rotary_emb=rope)
    for got, want in zip(fused, separate, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_zero_scale_equals_stock_processor():
    attn = double_stream_attention()
    image, text, rope = inputs(8, 4, seed=6)
    with torch.no_grad():
        ours = PLADISFluxAttnProcessor(0.0)(attn, image, text, image_rotary_emb=rope)
        stock = FluxAttnProcessor()(attn, image, text, image_rotary_emb=rope)
    for got, want in zip(ours, stock, strict=True):
        torch.testing.assert_close(got, want)


def test_bfloat16_output_is_finite_and_keeps_the_dtype():
    attn = double_stream_attention().to(torch.bfloat16)
    image, text, rope = inputs(16, 6, seed=7)
    with torch.no_grad():
        ours = PLADISFluxAttnProcessor(2.0)(attn, image.bfloat16(), text.bfloat16(), image_rotary_emb=rope)
        full = PLADISFluxAttnProcessor(2.0)(attn.float(), image, text, image_rotary_emb=rope)
    for got, want in zip(ours, full, strict=True):
        assert got.dtype == torch.bfloat16 and torch.isfinite(got).all()
        assert relative_error(got, want.double()) < 5e-2


def test_recorded_text_length_follows_each_call_and_its_hook_is_removed():
    module = torch.nn.Linear(4, 4)
    recorded = TextLength()
    hooks_before = dict(module._forward_pre_hooks)
    with pytest.raises(ValueError, match="inside"):
        with recorded_text_length(module, recorded):
            module.forward = lambda hidden_states, encoder_hidden_states=None: hidden_states
            module(torch.zeros(1, 3, 4), encoder_hidden_states=torch.zeros(1, 7, 4))
            assert recorded.tokens == 7
            module(torch.zeros(1, 3, 4), torch.zeros(1, 5, 4))
            assert recorded.tokens == 5
            raise ValueError("inside")
    assert module._forward_pre_hooks == hooks_before and recorded.tokens is None
