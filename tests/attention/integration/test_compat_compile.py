"""PLADIS under `torch.compile`: no graph breaks (inside a compiled graph the thresholds take a sort/bisection
path with no data-dependent control flow, exact like the eager one), the compiled U-Net gives the eager PLADIS
image, and new PLADIS processors with the same settings reuse the compiled graph."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from attention import apply_pladis, entmax_attention, pladis_scaled_dot_product_attention, text_block_pladis_attention
from attention.kernels.reference import reference_sparse_map
from tests.family_runs import build, one_thread, run_family  # noqa: F401

pytestmark = pytest.mark.slow  # torch.compile

ADVERSARIAL_ROWS = torch.tensor(
    [
        [0.0] * 8,  # all equal
        [3.0, 3.0, 3.0, -1.0, -1.0, 0.0, 0.0, 0.0],  # ties at the top
        [1e4, 1e4 - 1e-3, -1e4, 0.0, 5.0, 5.0, 1.0, 2.0],  # huge logits
        [float("-inf"), 1.0, float("-inf"), 2.0, 2.0, float("-inf"), 0.5, 0.0],  # masked keys
    ]
)


def reference_entmax(z: torch.Tensor, alpha: float) -> torch.Tensor:
    """The `entmax` package's exact maps in float64 (`attention.kernels.reference`): sort-based for 1.5 / 2,
    bisection otherwise."""
    return reference_sparse_map(z.double(), alpha)


@pytest.mark.parametrize("alpha", [1.5, 2.0, 1.25, 1.75])
@pytest.mark.parametrize("rows", ["adversarial", "random"])
def test_compiled_path_thresholds_are_exact(monkeypatch, alpha, rows):
    z = ADVERSARIAL_ROWS if rows == "adversarial" else torch.randn(6, 300, generator=torch.Generator().manual_seed(1))
    z = z * 8 if rows == "random" else z
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    torch.testing.assert_close(entmax_attention(z, alpha).double(), reference_entmax(z, alpha), atol=5e-6, rtol=1e-5)


def test_compiled_path_gives_zeros_for_fully_masked_rows(monkeypatch):
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    for alpha in (1.5, 2.0, 1.3):
        assert torch.equal(entmax_attention(torch.full((2, 5), float("-inf")), alpha), torch.zeros(2, 5))


@pytest.mark.parametrize("alpha", [1.5, 1.3])  # the sort-based and the bisection path (α = 2 sorts like 1.5)
def test_attention_functions_trace_without_graph_breaks(alpha):
    generator = torch.Generator().manual_seed(2)
    query, key, value = (torch.randn(2, 2, 40, 8, generator=generator) for _ in range(3))
    mask = torch.zeros(2, 1, 1, 40).masked_fill_(torch.arange(40) >= 30, float("-inf"))
    cross = torch._dynamo.explain(pladis_scaled_dot_product_attention)(query, key, value, 2.0, alpha, attn_mask=mask)
    joint = torch._dynamo.explain(text_block_pladis_attention)(query, key, value, 12, 2.0, alpha, text_first=False)
    assert (cross.graph_count, cross.graph_break_count) == (1, 0)
    assert (joint.graph_count, joint.graph_break_count) == (1, 0)


def test_compiled_unet_gives_the_eager_pladis_image_in_one_graph():
    pipe = build("sd15")
    with apply_pladis(pipe, 2.0):
        eager = run_family(pipe, "sd15")
    pipe.unet = torch.compile(pipe.unet, backend="eager")  # dynamo only: what matters here is the graph
    counters.clear()
    with apply_pladis(pipe, 2.0):
        compiled = run_family(pipe, "sd15")
    assert sum(counters["graph_break"].values()) == 0 and counters["stats"]["unique_graphs"] == 1
    np.testing.assert_allclose(compiled, eager, atol=1e-5)
    with apply_pladis(pipe, 2.0):  # fresh processor objects, same λ and α: the graph is reused
        np.testing.assert_allclose(run_family(pipe, "sd15"), eager, atol=1e-5)
    assert counters["stats"]["unique_graphs"] == 1


def test_compiled_flux_transformer_with_recorded_text_length_has_no_graph_break():
    """The per-call settings (a ContextVar read) and the denoiser's text-length recorder trace into the graph."""
    from scripts.dev.build_tiny_assets import tiny_flux_transformer
    from tests.attention.integration.test_install import flux_inputs

    transformer = tiny_flux_transformer(guidance_embeds=False).eval()
    inputs = flux_inputs(transformer)
    with torch.no_grad():
        with apply_pladis(transformer, 2.0, pladis_single_blocks=True):
            eager = transformer(**inputs).sample
        compiled = torch.compile(transformer, backend="eager")
        counters.clear()
        with apply_pladis(compiled, 2.0, pladis_single_blocks=True):
            output = compiled(**inputs).sample
    assert sum(counters["graph_break"].values()) == 0
    torch.testing.assert_close(output, eager, atol=1e-5, rtol=1e-5)
