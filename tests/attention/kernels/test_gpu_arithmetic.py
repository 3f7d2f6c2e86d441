"""The GPU's half-precision arithmetic, reproduced on this CPU and checked against float64 references.

On a GPU the kernels round PLADIS weights to V's dtype (to nearest, ties to even) before `A·V`, as
flash attention rounds its softmax weights, accumulate in float32 and round the output once. Triton's
interpreter truncates float32 → bfloat16 and cannot run bfloat16 dots, so there the kernels spell
the same arithmetic out (`_DOT_BF16_EMULATED`: bfloat16 operands widened exactly, every rounding done
to nearest on the bits); float16 runs the GPU's own `_DOT_HALF` branch. The `torch` path runs its CUDA
arithmetic (weights in V's dtype, one half-precision GEMM) on CPU half tensors as is.

Each test builds the GPU's result in float64 from the reference maps (`attention/kernels/reference.py`):
the weights rounded to the half dtype, products and sums in float64, one final rounding. Tolerances
are in output ulps, taken at the scale of each output's largest term |w·v| (where an output cancels
to near 0, that is the scale its float32 accumulation works at).
"""

from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl

from attention.kernels.kernel_calls import CrossAttentionCall, TextBlockCall
from attention.kernels.reference import (
    reference_pladis_weights,
    reference_scores,
    reference_softmax,
    reference_sparse_map,
)
from attention.kernels.sync_free_attention import sync_free_pladis_attention
from attention.kernels.triton_kernels import _round_bf16, triton_pladis_attention, triton_text_block_correction_
from attention.settings import PLADISSettings

HALF = {"float16": torch.float16, "bfloat16": torch.bfloat16}


@triton.jit
def _round_kernel(x_ptr, out_ptr, BLOCK: tl.constexpr):
    offsets = tl.arange(0, BLOCK)
    tl.store(out_ptr + offsets, _round_bf16(tl.load(x_ptr + offsets)))


def _truncated_bf16(x: torch.Tensor) -> torch.Tensor:
    """float32 → bfloat16 by dropping the low 16 bits (what Triton's interpreter does), as float32."""
    return (x.view(torch.int32) & -65536).view(torch.float32)


def test_emulated_bfloat16_rounding_is_round_to_nearest_even():
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(4096, generator=generator) * torch.logspace(-30, 30, 4096)
    bits = torch.tensor([0x3F808000, 0x3F818000, 0xBF808000, 0x3F80FFFF, 0x7F7FFFFF, 0x00018000], dtype=torch.int64)
    values = torch.cat([values, bits.to(torch.int32).view(torch.float32)])  # ties (even and odd), carries, subnormal
    padded = torch.zeros(triton.next_power_of_2(values.numel()))
    padded[: values.numel()] = values
    rounded = torch.empty_like(padded)
    _round_kernel[(1,)](padded, rounded, BLOCK=padded.numel())
    expected = padded.to(torch.bfloat16).float()
    assert torch.equal(rounded.view(torch.int32), expected.view(torch.int32))
    assert (_truncated_bf16(padded) != expected).sum() > 1000  # truncation would differ on half the values


def _ulp(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The spacing of `dtype` at |values| (float64), at least the smallest normal's."""
    info = torch.finfo(dtype)
    magnitude = values.abs().clamp_min(info.tiny)
    return torch.exp2(torch.floor(torch.log2(magnitude))) * info.eps


def _gpu_output(
    weights: torch.Tensor, value: torch.Tensor, dtype: torch.dtype, alpha: float = 1.0, base=None, beta: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 `beta·base + alpha·round(weights)·V`, rounded once to `dtype` (the GPU's arithmetic but
    its float32 accumulation order), and the scale of each output's largest term."""
    rounded = weights.to(dtype).double()
    exact = alpha * (rounded @ value.double())
    scale = (alpha * rounded.abs().unsqueeze(-1) * value.double().abs().unsqueeze(-3)).amax(-2)
    if base is not None:
        exact = exact + beta * base.double()
        scale = torch.maximum(scale, (beta * base.double()).abs())
    return exact.to(dtype).double(), torch.maximum(exact.abs(), scale)


def _assert_within_ulps(ours: torch.Tensor, expected: torch.Tensor, scale: torch.Tensor, dtype, ulps: float):
    error = (ours.double() - expected).abs() / _ulp(scale, dtype)
    assert error.max() <= ulps, f"{error.max():.2f} ulps (bound {ulps})"


def _half_case(dtype: torch.dtype, keys: int = 77, rows: int = 24, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    query = torch.randn(1, rows, 2, 16, generator=generator).transpose(1, 2).to(dtype)  # (B, N, H, D) memory
    key, value = (torch.randn(1, 2, keys, 16, generator=generator).to(dtype) for _ in range(2))
    return query, key, value


@pytest.mark.parametrize("dtype", sorted(HALF))
@pytest.mark.parametrize("alpha", [1.5, 2.0])
def test_triton_cross_attention_rounds_weights_and_output_as_the_gpu(dtype, alpha):
    """Within 1 output ulp of the float64 GPU model (weights rounded to V's dtype, one output rounding)."""
    query, key, value = _half_case(HALF[dtype])
    weights = reference_pladis_weights(reference_scores(query, key, scale=0.5, float64=True), 2.0, alpha)
    expected, scale = _gpu_output(weights, value, HALF[dtype])
    ours = triton_pladis_attention(CrossAttentionCall(query, key, value, PLADISSettings(2.0, alpha), None, 0.5))
    assert ours.dtype == HALF[dtype]
    _assert_within_ulps(ours, expected, scale, HALF[dtype], 1.0)
    # and the model tells the rounding modes apart: weights truncated instead land > 1 ulp away
    truncated = (_truncated_bf16(weights.float()).double() @ value.double()).to(HALF[dtype]).double()
    assert ((ours.double() - truncated).abs() / _ulp(scale, HALF[dtype])).max() > 1.0


@pytest.mark.parametrize("dtype", sorted(HALF))
def test_triton_text_block_adds_the_rounded_correction_as_the_gpu(dtype):
    """The image rows of the dense output plus the correction's rounded weights times V_txt, rounded
    once: within 1 output ulp of the float64 model (77 text keys first, 24 image rows)."""
    query, key, value = _half_case(HALF[dtype], keys=101, rows=101)
    text, image = slice(0, 77), slice(77, 101)
    scores = reference_scores(query, key, scale=0.5, float64=True)
    log_normaliser = torch.logsumexp(scores, -1)
    text_scores = scores[..., image, text]
    mass = reference_softmax(scores)[..., image, text].sum(-1, keepdim=True)
    weights = 2.0 * mass * (reference_sparse_map(text_scores, 1.5) - reference_softmax(text_scores))
    dense = torch.randn(1, 2, 101, 16, generator=torch.Generator().manual_seed(5)).to(HALF[dtype])
    expected, scale = _gpu_output(weights, value[..., text, :], HALF[dtype], base=dense[..., image, :])
    call = TextBlockCall(
        query, key, value, text, image, PLADISSettings(2.0), None, None, 0.5, dense.clone(), log_normaliser.float()
    )
    ours = triton_text_block_correction_(call)
    _assert_within_ulps(ours[..., image, :], expected, scale, HALF[dtype], 1.0)
    assert torch.equal(ours[..., text, :], dense[..., text, :])


@pytest.mark.parametrize("dtype", sorted(HALF))
def test_torch_path_rounds_sparse_weights_into_value_dtype_as_on_cuda(dtype):
    """The `torch` path's CUDA arithmetic on CPU half tensors: `(1 − λ)·SDPA + (λ/mass)·round(W)·V`,
    W = mass·entmax rounded to V's dtype, from one half GEMM, within 2 output ulps of the float64
    model (1 for the output rounding, 1 for the dense SDPA output's own, modelled from float64)."""
    query, key, value = _half_case(HALF[dtype])
    scores = reference_scores(query, key, scale=0.5, float64=True)
    mass = 4.0  # 4/f² with the scale 0.5 = 2^-1 × f, f = 1 (`sync_free_attention._sparse_numerators`)
    dense = (reference_softmax(scores) @ value.double()).to(HALF[dtype])
    numerators = mass * reference_sparse_map(scores, 1.5)
    expected, scale = _gpu_output(numerators, value, HALF[dtype], alpha=2.0 / mass, base=dense, beta=1.0 - 2.0)
    ours = sync_free_pladis_attention(CrossAttentionCall(query, key, value, PLADISSettings(2.0), None, 0.5))
    assert ours.dtype == HALF[dtype]
    _assert_within_ulps(ours, expected, scale, HALF[dtype], 2.0)
