"""`SmoothedEnergyAttnProcessor` on a bare diffusers `Attention`: only the perturbed batch chunk changes,
and it equals attention with a blurred query (keys and values untouched)."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from attention.integration.latent_grid import LatentSize
from attention.perturbation.seg_processor import SmoothedEnergyAttnProcessor, seg_attn_processors
from tests.guidance_reference import reference_blur

HEIGHT, WIDTH = 4, 6  # a non-square token grid


@pytest.fixture
def attn():
    torch.manual_seed(0)
    return Attention(query_dim=8, heads=2, dim_head=4).eval()


def expected_output(attn: Attention, hidden: torch.Tensor, perturbed_rows: int, sigma: float) -> torch.Tensor:
    """Stock attention for the leading rows; for the perturbed rows, softmax(blur(Q)Kᵀ/√d)V by hand."""
    stock = AttnProcessor2_0()(attn, hidden)
    ptb = hidden[-perturbed_rows:]
    query = torch.from_numpy(reference_blur(attn.to_q(ptb).double().detach().numpy(), HEIGHT, WIDTH, sigma))
    key, value = attn.to_k(ptb).double(), attn.to_v(ptb).double()
    split = lambda t: t.view(t.shape[0], -1, attn.heads, 4).transpose(1, 2)  # noqa: E731
    weights = torch.softmax(split(query) @ split(key).transpose(-1, -2) / 2.0, dim=-1)
    mixed = (weights @ split(value)).transpose(1, 2).reshape(ptb.shape[0], -1, 8).float()
    return torch.cat([stock[:-perturbed_rows], attn.to_out[0](mixed)])


@pytest.mark.parametrize("batch_chunks", [2, 3])
@pytest.mark.parametrize("sigma", [0.7, 2.0, 1e6])
def test_only_the_perturbed_chunk_attends_with_a_blurred_query(attn, batch_chunks, sigma):
    hidden = torch.randn(2 * batch_chunks, HEIGHT * WIDTH, 8, generator=torch.Generator().manual_seed(1))
    processor = SmoothedEnergyAttnProcessor(sigma, LatentSize(HEIGHT, WIDTH), batch_chunks)
    with torch.no_grad():
        out = processor(attn, hidden)
        stock = AttnProcessor2_0()(attn, hidden)
        expected = expected_output(attn, hidden, 2, sigma)
    torch.testing.assert_close(out[:-2], stock[:-2], rtol=0, atol=1e-6)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
    assert (out[-2:] - stock[-2:]).abs().max() > 1e-3  # the blur really acts


def test_grid_comes_from_the_recorded_latent_size(attn):
    # 24 tokens at the first halving of a 8×12 latent: a 4×6 grid, which no square assumption gives.
    hidden = torch.randn(2, HEIGHT * WIDTH, 8, generator=torch.Generator().manual_seed(2))
    processor = SmoothedEnergyAttnProcessor(1.0, LatentSize(8, 12), batch_chunks=2)
    with torch.no_grad():
        torch.testing.assert_close(processor(attn, hidden), expected_output(attn, hidden, 1, 1.0), rtol=0, atol=1e-5)


def test_unknown_latent_size_is_a_clear_error(attn):
    with pytest.raises(RuntimeError, match="recording_latent_size"):
        SmoothedEnergyAttnProcessor(1.0, LatentSize(), batch_chunks=2)(attn, torch.zeros(2, 24, 8))


def test_processor_pair_is_with_and_without_cfg():
    with_cfg, without_cfg = seg_attn_processors(3.0, LatentSize())
    assert (with_cfg.batch_chunks, without_cfg.batch_chunks) == (3, 2)
    with pytest.raises(ValueError, match="seg_blur_sigma"):
        SmoothedEnergyAttnProcessor(-1.0, LatentSize(), batch_chunks=2)
