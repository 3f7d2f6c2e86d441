"""The latent-size recorder and the token grid of each U-Net depth, which lay a layer's tokens out as an image."""

from __future__ import annotations

import pytest
import torch

from attention.integration.latent_grid import recording_latent_size, token_grid


@pytest.mark.parametrize(
    "tokens,latent,grid",
    [
        (32 * 48, (32, 48), (32, 48)),
        (16 * 24, (32, 48), (16, 24)),
        (8 * 12, (32, 48), (8, 12)),
        (7 * 10, (25, 37), (7, 10)),  # odd sizes round up at each stride-2 downsampling
        (128 * 96, (128, 96), (128, 96)),
    ],
)
def test_token_grid_follows_unet_downsampling(tokens, latent, grid):
    assert token_grid(tokens, *latent) == grid


def test_token_grid_rejects_a_token_count_from_another_image():
    with pytest.raises(ValueError, match="32x48"):
        token_grid(64, 32, 48)


def test_recorder_sees_each_call_and_is_removed():
    model = torch.nn.Conv2d(4, 4, 1)
    with recording_latent_size(model) as size:
        model(torch.zeros(1, 4, 5, 7))
        assert (size.height, size.width) == (5, 7)
        model(torch.zeros(1, 4, 3, 2))
        assert (size.height, size.width) == (3, 2)
    model(torch.zeros(1, 4, 9, 9))
    assert (size.height, size.width) == (3, 2) and not model._forward_pre_hooks
