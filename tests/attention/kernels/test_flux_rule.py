"""The joint-attention text-block rule (`text_block_pladis_attention`) against an independent float64
materialised formulation built on the `entmax` package, its structure, and its O(N·L_txt) memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from attention.kernels import chunked
from attention.kernels.reference import (
    reference_pladis_weights,
    reference_scores,
    reference_softmax,
    reference_sparse_map,
    reference_text_block_weights,
)
from attention.kernels.text_block import text_block_pladis_attention

REPO = Path(__file__).resolve().parents[3]


def materialised_weights(q, k, text_length, scale, alpha, text_first=True, mask=None) -> torch.Tensor:
    """Float64 (N×N) map of `attention.kernels.reference`: dense softmax rows, except image-query × text-key blocks,
    which become `m·[λ·entmax_α(z_txt) + (1 − λ)·softmax(z_txt)]` with m the dense text mass of the row."""
    z = reference_scores(q, k, mask, float64=True)
    return reference_text_block_weights(z, text_length, scale, alpha, text_first=text_first)


def random_qkv(batch, heads, tokens, dim, seed, spread=2.5, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, heads, tokens, dim, generator=generator) for _ in range(3))
    return (q * spread).to(dtype), (k * spread).to(dtype), v.to(dtype)


def relative_error(ours: torch.Tensor, expected: torch.Tensor) -> float:
    return float((ours.double() - expected).abs().max() / expected.abs().max())


SIZES = [(7, 20), (1, 16), (32, 9), (77, 256)]  # (text tokens, image tokens)


@pytest.mark.parametrize(
    "alpha,text_length,image_length",
    [(alpha, *size) for alpha in (1.5, 2.0) for size in SIZES] + [(1.3, 7, 20), (1.3, 32, 9)],
)
@pytest.mark.parametrize("scale", [0.5, 1.0, 2.0])
def test_rule_matches_float64_materialised_formulation(alpha, scale, text_length, image_length):
    q, k, v = random_qkv(2, 3, text_length + image_length, 16, seed=text_length + image_length)
    ours = text_block_pladis_attention(q, k, v, text_length, scale, alpha)
    expected = materialised_weights(q, k, text_length, scale, alpha) @ v.double()
    assert ours.dtype == torch.float32
    assert relative_error(ours, expected) < 1e-5


@pytest.mark.parametrize("alpha", [1.5, 2.0])
def test_text_last_layout_matches_materialised_formulation(alpha):
    q, k, v = random_qkv(1, 2, 40 + 11, 8, seed=3)
    ours = text_block_pladis_attention(q, k, v, 11, 2.0, alpha, text_first=False)
    expected = materialised_weights(q, k, 11, 2.0, alpha, text_first=False) @ v.double()
    assert relative_error(ours, expected) < 1e-5
    wrong_side = materialised_weights(q, k, 11, 2.0, alpha, text_first=True) @ v.double()
    assert relative_error(ours, wrong_side) > 1e-2


def test_weights_have_the_text_block_structure():
    """With V = identity the output IS the map: rows sum to 1, only image×text entries change,
    and each image row's text block keeps its dense mass."""
    text_length, tokens = 6, 30
    q, k, _ = random_qkv(1, 2, tokens, 8, seed=11)
    identity = torch.eye(tokens).expand(1, 2, tokens, tokens)
    weights = text_block_pladis_attention(q, k, identity, text_length, 2.0).double()
    dense = torch.softmax(q.double() @ k.double().transpose(-1, -2) / 8**0.5, dim=-1)
    torch.testing.assert_close(weights.sum(-1), torch.ones(1, 2, tokens, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(weights[..., :text_length, :], dense[..., :text_length, :], atol=1e-6, rtol=0)
    torch.testing.assert_close(
        weights[..., text_length:, text_length:], dense[..., text_length:, text_length:], atol=1e-6, rtol=0
    )
    torch.testing.assert_close(
        weights[..., text_length:, :text_length].sum(-1),
        dense[..., text_length:, :text_length].sum(-1),
        atol=1e-6,
        rtol=0,
    )
    assert (weights[..., text_length:, :text_length] - dense[..., text_length:, :text_length]).abs().max() > 1e-2
    assert (weights[..., text_length:, :text_length] < -1e-4).any()  # λ = 2 extrapolates below zero


def test_wrong_variants_are_far_from_the_rule():
    """Blending the whole joint row, or the text block without its dense mass, must not pass."""
    text_length, tokens = 9, 40
    q, k, v = random_qkv(2, 2, tokens, 16, seed=5)
    ours = text_block_pladis_attention(q, k, v, text_length, 2.0)
    z = reference_scores(q, k, float64=True)
    whole_row = reference_pladis_weights(z, 2.0, 1.5) @ v.double()
    unscaled = materialised_weights(q, k, text_length, 2.0, 1.5)
    block = z[..., text_length:, :text_length]
    unscaled[..., text_length:, :text_length] = 2.0 * reference_sparse_map(block, 1.5) - reference_softmax(block)
    assert relative_error(ours, whole_row) > 1e-2
    assert relative_error(ours, unscaled @ v.double()) > 1e-2


def test_zero_scale_and_empty_blocks_are_plain_sdpa():
    q, k, v = random_qkv(1, 2, 24, 8, seed=2)
    sdpa = F.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(text_block_pladis_attention(q, k, v, 5, 0.0), sdpa, atol=0, rtol=0)
    torch.testing.assert_close(text_block_pladis_attention(q, k, v, 0, 2.0), sdpa, atol=0, rtol=0)
    torch.testing.assert_close(text_block_pladis_attention(q, k, v, 24, 2.0), sdpa, atol=0, rtol=0)


def test_query_chunks_do_not_change_the_result(monkeypatch):
    q, k, v = random_qkv(2, 2, 12 + 50, 16, seed=8)
    whole = text_block_pladis_attention(q, k, v, 12, 2.0)
    monkeypatch.setattr(chunked, "TEXT_BLOCK_CHUNK", 2 * 2 * 12 * 7)  # 7 image rows per chunk
    torch.testing.assert_close(text_block_pladis_attention(q, k, v, 12, 2.0), whole, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("boolean", [True, False])
def test_attention_mask_follows_sdpa_semantics(boolean):
    q, k, v = random_qkv(2, 2, 10 + 20, 8, seed=9)
    keep = torch.ones(2, 1, 1, 30, dtype=torch.bool)
    keep[0, ..., 6:10] = False  # padded text tokens of the first sample
    keep[1, ..., 25:] = False
    mask = keep if boolean else torch.zeros(keep.shape).masked_fill(~keep, float("-inf"))
    ours = text_block_pladis_attention(q, k, v, 10, 2.0, attn_mask=mask)
    expected = materialised_weights(q, k, 10, 2.0, 1.5, mask=keep) @ v.double()
    assert relative_error(ours, expected) < 1e-5


def test_bfloat16_is_finite_and_close_to_float32():
    q, k, v = random_qkv(1, 2, 64 + 256, 16, seed=4, dtype=torch.bfloat16)
    ours = text_block_pladis_attention(q, k, v, 64, 2.0)
    assert ours.dtype == torch.bfloat16 and torch.isfinite(ours).all()
    reference = text_block_pladis_attention(q.float(), k.float(), v.float(), 64, 2.0)
    assert relative_error(ours, reference.double()) < 3e-2


@pytest.mark.parametrize("text_length,error", [(-1, ValueError), (31, ValueError), (2.0, TypeError), (True, TypeError)])
def test_bad_text_length_is_rejected(text_length, error):
    q, k, v = random_qkv(1, 1, 30, 8, seed=0)
    with pytest.raises(error, match="text_length"):
        text_block_pladis_attention(q, k, v, text_length, 2.0)


# Peak resident memory of one call, in a fresh interpreter with every allocation ≥ 64 KiB mmapped
# (so freed memory leaves the RSS): VmHWM is reset to the current RSS right before the call.
_PEAK_MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, sys, types
    import torch
    torch.set_num_threads(1)
    package = types.ModuleType("attention")  # the math module without diffusers (a faster start)
    package.__path__ = ["attention"]
    sys.modules["attention"] = package
    import attention.kernels.query_chunks
    from attention.kernels.text_block import text_block_pladis_attention

    # The CPU workspace kept between calls (bounded, whatever N) would hide each call's own peak.
    attention.kernels.query_chunks._KEPT_WORKSPACE_BYTES = 0

    def materialised(q, k, v, text_length):
        z = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
        weights = torch.softmax(z, dim=-1)
        return weights @ v

    def status(field):
        line = next(l for l in open("/proc/self/status") if l.startswith(field))
        return int(line.split()[1]) * 1024

    def peak_extra_bytes(function, tokens, text_length=128):
        generator = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(1, 2, tokens, 32, generator=generator) for _ in range(3))
        function(q[..., :text_length + 8, :], k[..., :text_length + 8, :], v[..., :text_length + 8, :], text_length)
        baseline = status("VmRSS")
        open("/proc/self/clear_refs", "w").write("5")
        function(q, k, v, text_length)
        return status("VmHWM") - baseline

    ours = lambda q, k, v, text_length: text_block_pladis_attention(q, k, v, text_length, 2.0)
    print(json.dumps({
        "ours": [peak_extra_bytes(ours, n) for n in (1024, 2048, 4096)],
        "materialised": [peak_extra_bytes(materialised, n) for n in (1024, 2048)],
    }))
    """
)


@pytest.mark.slow  # subprocesses
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc peak-RSS reset")
def test_peak_memory_grows_linearly_in_tokens():
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", _PEAK_MEMORY_SCRIPT],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    peaks = json.loads(result.stdout.strip().splitlines()[-1])
    small, medium, large = peaks["ours"]
    score_map_bytes = 2 * 4096 * 4096 * 4  # one float32 (N×N) map for 2 heads at N = 4096: 128 MiB
    # The method sees N²: the materialised map's peak grows ~4× when N doubles.
    assert peaks["materialised"][1] > 3 * peaks["materialised"][0]
    # Ours grows ~2× per doubling (linear: 2×, quadratic: 4×) and stays far below one N×N map.
    assert large - medium < 3 * (medium - small) + (1 << 20), peaks
    assert large < score_map_bytes / 4, peaks
