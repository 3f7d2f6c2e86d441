"""Every PLADIS kernel computes the reference maps: the sync-free torch path and the Triton kernels
(Triton's interpreter on CPU, compiled on `PLADIS_TEST_DEVICE=cuda`) against the float64
materialised formulation with the `entmax` package, on hard inputs, in float32 and half precision."""

from __future__ import annotations

import pytest
import torch

from attention.kernels.dense_attention import dense_attention_and_log_normaliser, dense_attention_and_text_mass
from attention.kernels.kernel_calls import CrossAttentionCall, TextBlockCall
from attention.kernels.reference import reference_pladis_sdpa, reference_text_block
from attention.kernels.sync_free_attention import sync_free_pladis_attention, sync_free_text_block_correction_
from attention.kernels.triton_kernels import triton_pladis_attention, triton_text_block_correction_
from attention.settings import PLADISSettings
from tests.attention_cases import CASES, attention_case

CROSS = {"torch": sync_free_pladis_attention, "triton": triton_pladis_attention}
TEXT_BLOCK = {"torch": sync_free_text_block_correction_, "triton": triton_text_block_correction_}
HALF = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def _on(device, *tensors):
    return [None if t is None else t.to(device) for t in tensors]


@pytest.mark.parametrize("kernel", sorted(CROSS))
@pytest.mark.parametrize("alpha", [1.5, 2.0])
@pytest.mark.parametrize("case", CASES)
def test_cross_attention_rule_matches_float64_reference(kernel, alpha, case, device):
    query, key, value, mask, scale = attention_case(case)
    expected = reference_pladis_sdpa(
        query.double(),
        key.double(),
        value.double(),
        2.0,
        alpha,
        attn_mask=None if mask is None else mask.double(),
        scale=scale,
    )
    ours = CROSS[kernel](
        CrossAttentionCall(*_on(device, query, key, value), PLADISSettings(2.0, alpha), *_on(device, mask), scale)
    )
    assert ours.dtype == torch.float32 and not ours.isnan().any()
    torch.testing.assert_close(ours.cpu().double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel", sorted(CROSS))
@pytest.mark.parametrize("dtype", sorted(HALF))
@pytest.mark.parametrize("case", ["random", "fully_masked"])
def test_cross_attention_rule_in_half_precision_is_exact_to_the_output_rounding(kernel, dtype, case, device):
    query, key, value, mask, scale = (
        t.to(HALF[dtype]) if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in attention_case(case)
    )
    expected = reference_pladis_sdpa(
        query.double(),
        key.double(),
        value.double(),
        2.0,
        1.5,
        attn_mask=None if mask is None else mask.double(),
        scale=scale,
    )
    ours = CROSS[kernel](
        CrossAttentionCall(*_on(device, query, key, value), PLADISSettings(2.0), *_on(device, mask), scale)
    )
    assert ours.dtype == HALF[dtype] and not ours.isnan().any()
    rounding = torch.finfo(HALF[dtype]).eps * expected.abs().amax()
    torch.testing.assert_close(ours.cpu().double(), expected, rtol=0, atol=4 * rounding.item())


@pytest.mark.parametrize("kernel", sorted(CROSS))
@pytest.mark.parametrize("case", ["random", "masked", "fully_masked"])
def test_cross_attention_over_long_rows_goes_by_key_blocks_exactly(kernel, case, device):
    """300 keys: the Triton kernel's blocks of 128 keys (the last one partly padding) recomputed at every
    pass, with the mask and fully masked rows, give the reference maps."""
    query, key, value, mask, scale = attention_case(case, keys=300, rows=20)
    expected = reference_pladis_sdpa(
        query.double(),
        key.double(),
        value.double(),
        2.0,
        1.5,
        attn_mask=None if mask is None else mask.double(),
        scale=scale,
    )
    ours = CROSS[kernel](
        CrossAttentionCall(*_on(device, query, key, value), PLADISSettings(2.0), *_on(device, mask), scale)
    )
    torch.testing.assert_close(ours.cpu().double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel", sorted(CROSS))
def test_large_lambda_on_fully_masked_rows_gives_zeros_not_nan(kernel, device):
    query, key, value, mask, scale = attention_case("fully_masked")
    ours = CROSS[kernel](
        CrossAttentionCall(*_on(device, query, key, value), PLADISSettings(50.0), *_on(device, mask), scale)
    ).cpu()
    assert not ours.isnan().any()
    assert ours[:, :, ::3].abs().max() == 0


@pytest.mark.parametrize("kernel", sorted(TEXT_BLOCK))
@pytest.mark.parametrize("alpha", [1.5, 2.0])
@pytest.mark.parametrize("text_first", [True, False])
@pytest.mark.parametrize("text_keys", [40, 77, pytest.param(512, marks=pytest.mark.slow)])
@pytest.mark.parametrize("source", ["log_normaliser", "text_mass"])
def test_text_block_correction_matches_float64_reference(kernel, alpha, text_first, text_keys, source, device):
    generator = torch.Generator().manual_seed(text_keys)
    image_rows = 16 if text_keys == 512 else 40
    joint = text_keys + image_rows
    query, key, value = (torch.randn(1, 2, joint, 16, generator=generator) * 1.5 for _ in range(3))
    text = slice(0, text_keys) if text_first else slice(image_rows, joint)
    image = slice(text_keys, joint) if text_first else slice(0, image_rows)
    expected = reference_text_block(
        query.double(), key.double(), value.double(), text_keys, 2.0, alpha, text_first=text_first
    )
    query, key, value = _on(device, query, key, value)
    if source == "log_normaliser":
        dense = dense_attention_and_log_normaliser(query, key, value, None, 16**-0.5)
        if dense is None:
            pytest.skip(f"no fused attention op returns the log-sum-exp for {query.dtype} on {device}")
        output, row_values = dense
        arguments = dict(log_normaliser=row_values)
    else:
        output, row_values = dense_attention_and_text_mass(query, key, value, text, None, 16**-0.5)
        arguments = dict(text_mass=row_values)
    call = TextBlockCall(
        query, key, value, text, image, PLADISSettings(2.0, alpha), None, None, 16**-0.5, output, **arguments
    )
    ours = TEXT_BLOCK[kernel](call)
    torch.testing.assert_close(ours.cpu().double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel", sorted(TEXT_BLOCK))
def test_text_block_correction_honours_masked_text_keys_and_padding(kernel, device):
    """A padded text key weighs 0 in both maps, and a sample whose text is all padding stays dense."""
    generator = torch.Generator().manual_seed(3)
    query, key, value = (torch.randn(2, 2, 60, 16, generator=generator) for _ in range(3))
    mask = torch.zeros(2, 1, 1, 60)
    mask[0, ..., 12:20] = float("-inf")  # sample 0: 8 of 20 text tokens are padding
    mask[1, ..., 0:20] = float("-inf")  # sample 1: no text at all
    expected = reference_text_block(query.double(), key.double(), value.double(), 20, 2.0, 1.5, attn_mask=mask.double())
    query, key, value, mask = _on(device, query, key, value, mask)
    output, text_mass = dense_attention_and_text_mass(query, key, value, slice(0, 20), mask, 0.25)
    text, image, settings = slice(0, 20), slice(20, 60), PLADISSettings(2.0)
    call = TextBlockCall(
        query, key, value, text, image, settings, None, mask[..., 0:20], 0.25, output, text_mass=text_mass
    )
    ours = TEXT_BLOCK[kernel](call)
    torch.testing.assert_close(ours.cpu().double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("alpha", [1.25, 1.75])
@pytest.mark.parametrize("case", ["random", "masked", "fully_masked"])
def test_torch_path_covers_every_alpha(alpha, case, device):
    """Other α take a fixed number of bisection and Newton steps (no sync), to the same map."""
    query, key, value, mask, scale = attention_case(case)
    expected = reference_pladis_sdpa(
        query.double(),
        key.double(),
        value.double(),
        2.0,
        alpha,
        attn_mask=None if mask is None else mask.double(),
        scale=scale,
    )
    ours = sync_free_pladis_attention(
        CrossAttentionCall(*_on(device, query, key, value), PLADISSettings(2.0, alpha), *_on(device, mask), scale)
    )
    torch.testing.assert_close(ours.cpu().double(), expected, rtol=1e-5, atol=2e-5)
