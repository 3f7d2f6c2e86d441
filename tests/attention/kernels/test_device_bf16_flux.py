"""The production FLUX path, in bfloat16 on `PLADIS_TEST_DEVICE`, against float64: the dense op stock SDPA
runs on the card with its log-sum-exp, the text-block Triton kernel and the `torch` branch (half GEMMs with
float32 output), unmasked and with padded text; on CUDA also that the dense op is the one stock SDPA picks.

On CUDA the inputs are FLUX-shaped at 1024² (512 text + 4096 image tokens, head dim 128; 4 heads: the
kernels treat heads alike); on CPU (Triton's interpreter, the CPU flash kernel) a small joint sequence keeps
the check fast. Tolerances are in output ulps: bfloat16's spacing at the largest reference value.
"""

from __future__ import annotations

import pytest
import torch

from attention.kernels.dense_attention import dense_attention_and_log_normaliser
from attention.kernels.reference import reference_scores, reference_text_block
from attention.kernels.sdpa_backend import stock_sdpa_backend
from attention.kernels.text_block import text_block_pladis_attention
from attention.settings import PLADISSettings

ULP = torch.finfo(torch.bfloat16).eps  # spacing of bfloat16 values in [1, 2)
SCALE = 128**-0.5
_FUSED_CHOICE = {0: "math", 1: "flash", 2: "efficient", 3: "cudnn"}  # torch's SDPBackend numbers


def _joint(device: torch.device, seed: int = 0) -> tuple[list[torch.Tensor], int]:
    """bfloat16 (1, H, text + image, 128) query, key and value on `device`, and the text length."""
    text, image, heads = (512, 4096, 4) if device.type == "cuda" else (77, 64, 2)
    generator = torch.Generator().manual_seed(seed)
    tensors = [torch.randn(1, heads, text + image, 128, generator=generator) * 1.5 for _ in range(3)]
    return [t.to(device, torch.bfloat16) for t in tensors], text


def _assert_within_ulps(ours: torch.Tensor, expected: torch.Tensor, ulps: float) -> None:
    tolerance = ulps * ULP * expected.abs().amax().item()
    error = (ours.cpu().double() - expected.cpu()).abs().amax().item()
    assert error <= tolerance, f"max error {error:.3g} > {ulps} output ulps ({tolerance:.3g})"


def test_dense_op_and_its_log_sum_exp_match_float64(device):
    """Which op runs (flash / cuDNN / memory-efficient) depends on the card; its output and its
    log-sum-exp, in the (B, H, N) layout the correction reads, are the float64 ones."""
    (query, key, value), _ = _joint(device)
    dense = dense_attention_and_log_normaliser(query, key, value, None, SCALE)
    assert dense is not None, "bfloat16 joint attention has a fused op with its log-sum-exp on this device"
    output, log_normaliser = dense
    scores = reference_scores(query, key, scale=SCALE, float64=True)
    expected = torch.softmax(scores, -1) @ value.double()
    assert log_normaliser.shape == query.shape[:-1] and log_normaliser.dtype == torch.float32
    torch.testing.assert_close(log_normaliser.double(), scores.logsumexp(-1), rtol=0, atol=1e-3)
    _assert_within_ulps(output, expected, 2)


@pytest.mark.parametrize("kernel", ["triton", "torch"])
@pytest.mark.parametrize("alpha", [1.5, 2.0])
def test_text_block_rule_in_bfloat16_matches_float64_to_a_few_output_ulps(device, kernel, alpha):
    """The whole joint rule as FLUX calls it: dense op + log-sum-exp, then the correction by `kernel`."""
    (query, key, value), text = _joint(device, seed=1)
    ours = text_block_pladis_attention(query, key, value, text, PLADISSettings(2.0, alpha, kernel=kernel), scale=SCALE)
    expected = reference_text_block(query, key, value, text, 2.0, alpha, scale=SCALE, float64=True)
    assert ours.dtype == torch.bfloat16 and not ours.isnan().any()
    _assert_within_ulps(ours, expected, 4)
    dense_only = torch.softmax(reference_scores(query, key, scale=SCALE, float64=True), -1) @ value.double()
    assert (expected - dense_only).abs().amax() > 20 * ULP * expected.abs().amax()  # PLADIS changed it


@pytest.mark.parametrize("kernel", ["triton", "torch"])
def test_text_block_rule_with_padded_text_in_bfloat16_matches_float64(device, kernel):
    """A text mask (Qwen-Image, Chroma): the dense part and the text mass come from SDPA itself."""
    (query, key, value), text = _joint(device, seed=2)
    mask = torch.ones(1, 1, 1, query.shape[-2], dtype=torch.bool, device=device)
    mask[..., text // 2 : text] = False  # the second half of the text is padding
    settings = PLADISSettings(2.0, kernel=kernel)
    ours = text_block_pladis_attention(query, key, value, text, settings, attn_mask=mask, scale=SCALE)
    expected = reference_text_block(query, key, value, text, 2.0, 1.5, attn_mask=mask, scale=SCALE, float64=True)
    _assert_within_ulps(ours, expected, 4)


def test_the_dense_op_is_the_one_stock_sdpa_picks_on_this_card(device):
    """`stock_sdpa_backend` (decided from the card's capability and torch's switches) against torch's own
    `_fused_sdp_choice` on the device, for the shapes and dtypes PLADIS passes it."""
    if device.type != "cuda":
        pytest.skip("torch asks the device which SDPA kernel it runs: CUDA only")
    cases = []
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        for heads, rows, keys, dim in (
            (24, 4608, 4608, 128),
            (10, 4096, 77, 64),
            (20, 1024, 300, 112),
            (2, 64, 64, 256),
        ):
            query = torch.randn(1, rows, heads, dim, device=device, dtype=dtype).transpose(1, 2)
            key, value = (torch.randn(1, heads, keys, dim, device=device, dtype=dtype) for _ in range(2))
            mask = torch.zeros(1, 1, 1, keys, device=device, dtype=dtype)
            cases += [(query, key, value, None), (query, key, value, mask)]
    for query, key, value, mask in cases:
        torch_choice = _FUSED_CHOICE[torch._fused_sdp_choice(query, key, value, mask)]
        ours = stock_sdpa_backend(query, key, value, mask)
        assert ours == torch_choice, (query.dtype, tuple(query.shape), mask is not None)
