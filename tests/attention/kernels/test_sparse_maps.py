"""The exact sparse maps against the `entmax` package (float64) on random and adversarial rows."""

from __future__ import annotations

import pytest
import torch

from attention import entmax_attention, pladis_weights, softmax_attention
from attention.kernels.reference import reference_pladis_weights, reference_sparse_map
from attention.kernels.sparse_maps import _sparse_map_
from attention.validation import MAX_PLADIS_SCALE

SHAPES = [(3, 77), (2, 5, 300), (4, 2048), (6, 1)]


def reference_entmax(z: torch.Tensor, alpha: float) -> torch.Tensor:
    """The `entmax` package's exact maps in float64 (`attention.kernels.reference`): sort-based for 1.5 / 2,
    bisection otherwise."""
    return reference_sparse_map(z.double(), alpha)


@pytest.mark.parametrize("alpha", [1.5, 2.0, 1.25, 1.75])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("spread", [0.5, 4.0, 50.0])
def test_entmax_matches_entmax_package(alpha, shape, spread):
    z = torch.randn(shape, generator=torch.Generator().manual_seed(len(shape) * 7 + int(spread))) * spread
    ours = entmax_attention(z.float(), alpha).double()
    torch.testing.assert_close(ours, reference_entmax(z, alpha), atol=5e-6, rtol=1e-5)


@pytest.mark.parametrize("alpha", [1.5, 2.0, 1.3])
def test_entmax_on_adversarial_rows(alpha):
    rows = torch.tensor(
        [
            [0.0] * 8,  # all equal
            [3.0, 3.0, 3.0, -1.0, -1.0, 0.0, 0.0, 0.0],  # ties at the top
            [1e4, 1e4 - 1e-3, -1e4, 0.0, 5.0, 5.0, 1.0, 2.0],  # huge logits
            [float("-inf"), 1.0, float("-inf"), 2.0, 2.0, float("-inf"), 0.5, 0.0],  # masked keys
            [1.0, 1.0 - 1e-7, 1.0 - 2e-7, 0.0, 0.0, 0.0, 0.0, 0.0],  # near-ties
        ]
    )
    ours = entmax_attention(rows, alpha)
    finite = torch.where(torch.isinf(rows), torch.full_like(rows, -1e9), rows)
    torch.testing.assert_close(ours.double(), reference_entmax(finite, alpha), atol=2e-6, rtol=1e-5)
    assert torch.isfinite(ours).all()


@pytest.mark.parametrize("safe_passes", [0, 1, 2])
@pytest.mark.parametrize("spread", [0.3, 4.0])
def test_entmax15_monotone_fallback_is_exact(monkeypatch, safe_passes, spread):
    """The safety net (monotone steps after `_SAFE_PASSES` jumps) reaches the same exact map."""
    monkeypatch.setattr("attention.kernels.sparse_maps._SAFE_PASSES", safe_passes)
    z = torch.randn(512, 77, generator=torch.Generator().manual_seed(safe_passes)) * spread
    torch.testing.assert_close(entmax_attention(z, 1.5).double(), reference_entmax(z, 1.5), atol=5e-6, rtol=1e-5)


def test_entmax15_low_contrast_rows_need_few_passes(monkeypatch):
    """Wide supports (logits within ~1 of each other, as random-weight U-Nets give) settle in 4 passes."""
    import attention.kernels.sparse_maps as sparse_maps

    passes = []
    solve = sparse_maps._entmax15_update

    def counting(gap, work, tau, state, pass_index):
        passes.append(pass_index)
        return solve(gap, work, tau, state, pass_index)

    monkeypatch.setattr(sparse_maps, "_entmax15_update", counting)
    z = torch.randn(4096, 77, generator=torch.Generator().manual_seed(3)) * 0.33
    ours = entmax_attention(z, 1.5)
    assert max(passes) + 1 <= 5
    torch.testing.assert_close(ours.double(), reference_entmax(z, 1.5), atol=5e-6, rtol=1e-5)


def test_sparsemax_is_sparse_and_sums_to_one():
    z = torch.randn(64, 77, generator=torch.Generator().manual_seed(1)) * 3
    for alpha in (1.5, 2.0):
        p = entmax_attention(z, alpha)
        assert (p == 0).float().mean() > 0.3  # genuinely sparse, unlike softmax
        torch.testing.assert_close(p.sum(-1), torch.ones(64), atol=2e-6, rtol=0)


def test_fully_masked_row_gives_zeros_not_nan():
    z = torch.full((2, 10), float("-inf"))
    z[1, 3] = 0.5
    for weights in (entmax_attention(z, 1.5), entmax_attention(z, 2.0), softmax_attention(z), pladis_weights(z, 2.0)):
        assert torch.isfinite(weights).all()
        assert weights[0].abs().sum() == 0
        assert weights[1, 3] == pytest.approx(1.0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_scores_are_thresholded_in_float32(dtype):
    z = (torch.randn(8, 2048, generator=torch.Generator().manual_seed(2)) * 4).to(dtype)
    ours = entmax_attention(z, 1.5)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours.double(), reference_entmax(z, 1.5), atol=5e-6, rtol=1e-5)
    torch.testing.assert_close(ours.sum(-1), torch.ones(8), atol=5e-6, rtol=0)


@pytest.mark.parametrize("scale", [0.0, 0.5, 1.0, 2.0, 3.5])
def test_pladis_weights_blend_dense_and_sparse(scale):
    z = torch.randn(5, 77, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 2
    expected = reference_pladis_weights(z, scale, 1.5)
    torch.testing.assert_close(pladis_weights(z.float(), scale).double(), expected, atol=2e-6, rtol=1e-5)
    # Rows of the extrapolated map still sum to one.
    torch.testing.assert_close(pladis_weights(z, scale).sum(-1), torch.ones(5, dtype=torch.float64))


@pytest.mark.parametrize("pladis_scale", [5.0, 50.0, MAX_PLADIS_SCALE])
@pytest.mark.parametrize("alpha", [1.5, 2.0, 1.25])
def test_fully_masked_rows_stay_zero_at_large_lambda(pladis_scale, alpha):
    """A row with no finite score maps to zeros at any λ: (1 − λ) is never divided by a tiny row sum."""
    z = torch.randn(4, 77, generator=torch.Generator().manual_seed(1))
    z[1] = float("-inf")
    weights = pladis_weights(z, pladis_scale, alpha)
    assert not weights.isnan().any() and not weights.isinf().any()
    assert weights[1].abs().max() == 0
    torch.testing.assert_close(weights[[0, 2, 3]].sum(-1), torch.ones(3), atol=1e-4 * pladis_scale, rtol=0)


@pytest.mark.parametrize("alpha", [1.00001, 1.0001, 1.001, 1.01])
@pytest.mark.parametrize("spread", [3.0, 30.0])
def test_float32_maps_for_alpha_close_to_one_are_as_exact_as_softmax(alpha, spread):
    """Near α = 1 the exponent 1/(α−1) magnifies any rounding of the gap x − τ ≈ 1 (the plain float32 power was
    off by 5e-5 at α = 1.0001, 6e-4 at 1.00001): both threshold paths stay within float32 rounding of the
    float64 reference, and rows sum to one."""
    z = torch.randn(8, 77, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * spread
    expected = reference_entmax(z, alpha)
    shifted = (z.float() - z.float().amax(-1, keepdim=True)).mul_(alpha - 1.0)
    for sparse in (entmax_attention(z.float(), alpha), _sparse_map_(shifted, alpha, sync_free=True)):
        torch.testing.assert_close(sparse.sum(-1), torch.ones(8), atol=1e-6, rtol=0)
        torch.testing.assert_close(sparse.double(), expected, atol=1e-6, rtol=0)
