"""PLADIS under autograd: with grad mode on and inputs requiring grad (a denoiser called outside
`torch.no_grad()`, gradient guidance), the processors take a differentiable path that gives the
fast path's values and correct gradients (float64 `gradcheck` against finite differences)."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import Attention

from attention import (
    PLADISAttnProcessor,
    apply_pladis,
    pladis_scaled_dot_product_attention,
    text_block_pladis_attention,
)
from tests.family_runs import build, one_thread  # noqa: F401


def random(*shape, seed: int, spread: float = 2.0, dtype=torch.float64) -> torch.Tensor:
    return (torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * spread).to(dtype)


@pytest.mark.slow  # finite differences
@pytest.mark.parametrize("alpha", [1.5, 2.0, 1.3])
def test_unet_attention_gradients_match_finite_differences(alpha):
    q, k, v = random(1, 2, 5, 4, seed=1), random(1, 2, 6, 4, seed=2), random(1, 2, 6, 4, seed=3, spread=1.0)
    inputs = tuple(t.requires_grad_() for t in (q, k, v))
    assert torch.autograd.gradcheck(lambda q, k, v: pladis_scaled_dot_product_attention(q, k, v, 2.0, alpha), inputs)


@pytest.mark.slow  # finite differences
@pytest.mark.parametrize("text_first", [True, False])
@pytest.mark.parametrize("alpha", [1.5, 2.0])
def test_joint_attention_gradients_match_finite_differences(text_first, alpha):
    q, k, v = (random(1, 2, 4 + 5, 4, seed=seed) for seed in (4, 5, 6))
    inputs = tuple(t.requires_grad_() for t in (q, k, v))

    def joint(q, k, v):
        return text_block_pladis_attention(q, k, v, 4, 2.0, alpha, text_first=text_first)

    assert torch.autograd.gradcheck(joint, inputs)


def test_differentiable_path_gives_the_fast_path_values_with_masks():
    q, k, v = (random(2, 3, n, 8, seed=n, dtype=torch.float32) for n in (12, 9, 9))
    keep = torch.ones(2, 1, 1, 9, dtype=torch.bool)
    keep[0, ..., 6:] = False
    with torch.no_grad():
        fast = pladis_scaled_dot_product_attention(q, k, v, 2.0, attn_mask=keep)
    slow = pladis_scaled_dot_product_attention(q.requires_grad_(), k, v, 2.0, attn_mask=keep)
    assert slow.requires_grad
    torch.testing.assert_close(slow.detach(), fast, atol=2e-6, rtol=1e-5)

    joint_q, joint_k, joint_v = (random(2, 3, 5 + 12, 8, seed=s, dtype=torch.float32) for s in (7, 8, 9))
    joint_keep = torch.ones(2, 1, 1, 17, dtype=torch.bool)
    joint_keep[1, ..., 3:5] = False  # padded text tokens of the second sample
    with torch.no_grad():
        fast = text_block_pladis_attention(joint_q, joint_k, joint_v, 5, 2.0, attn_mask=joint_keep)
    slow = text_block_pladis_attention(joint_q.requires_grad_(), joint_k, joint_v, 5, 2.0, attn_mask=joint_keep)
    torch.testing.assert_close(slow.detach(), fast, atol=2e-6, rtol=1e-5)


def test_fully_masked_rows_stay_finite_with_gradients():
    q, k, v = (random(1, 1, n, 4, seed=n, dtype=torch.float32).requires_grad_() for n in (3, 5, 5))
    mask = torch.zeros(1, 1, 3, 5)
    mask[..., 1, :] = float("-inf")  # query 1 sees no key
    out = pladis_scaled_dot_product_attention(q, k, v, 2.0, attn_mask=mask)
    out.sum().backward()
    assert torch.equal(out[0, 0, 1].detach(), torch.zeros(4))
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


def test_processor_called_with_grad_enabled_matches_no_grad():
    torch.manual_seed(0)
    attn = Attention(32, cross_attention_dim=24, heads=4, dim_head=8, processor=PLADISAttnProcessor(2.0))
    hidden, context = random(2, 16, 32, seed=11, dtype=torch.float32), random(2, 7, 24, seed=12, dtype=torch.float32)
    with torch.no_grad():
        expected = attn(hidden, encoder_hidden_states=context)
    out = attn(hidden, encoder_hidden_states=context)  # weights require grad: the autograd path
    out.square().mean().backward()
    torch.testing.assert_close(out.detach(), expected, atol=2e-6, rtol=1e-5)
    assert attn.to_q.weight.grad is not None and torch.isfinite(attn.to_q.weight.grad).all()


@pytest.mark.parametrize("family", ["sd15", "sd3"])
def test_gradient_through_the_denoiser_reaches_the_latents(family):
    """What gradient-guidance methods do: d(loss)/d(latents) through a PLADIS denoiser step."""
    pipe = build(family)
    model = pipe.unet if family == "sd15" else pipe.transformer
    if family == "sd15":
        latents = random(1, 4, 8, 8, seed=13, dtype=torch.float32).requires_grad_()
        call = lambda: model(latents, 500, encoder_hidden_states=random(1, 7, 32, seed=14, dtype=torch.float32)).sample  # noqa: E731
    else:
        latents = random(1, 16, 8, 8, seed=13, dtype=torch.float32).requires_grad_()
        context = random(1, 7, model.config.joint_attention_dim, seed=14, dtype=torch.float32)
        pooled = random(1, model.config.pooled_projection_dim, seed=15, dtype=torch.float32)
        call = lambda: model(latents, context, pooled, torch.tensor([500.0])).sample  # noqa: E731
    stock = torch.autograd.grad(call().square().mean(), latents)[0]
    with apply_pladis(pipe, 2.0):
        boosted = torch.autograd.grad(call().square().mean(), latents)[0]
    assert torch.isfinite(boosted).all() and (boosted - stock).abs().max() > 1e-6
