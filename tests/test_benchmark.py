"""The benchmark compares like with like: its reference formulations (materialised maps and the
`entmax` package) compute what our fast paths compute, and its options are checked."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from attention import pladis_scaled_dot_product_attention, text_block_pladis_attention
from attention.reference import computing_reference, reference_pladis_sdpa, reference_text_block
from scripts import benchmark


@pytest.mark.parametrize("alpha", [1.5, 2.0])
def test_reference_sdpa_matches_fast_path(alpha):
    q, k, v = (torch.randn(2, 3, n, 16, generator=torch.Generator().manual_seed(n)) for n in (50, 77, 77))
    torch.testing.assert_close(
        reference_pladis_sdpa(q, k, v, 2.0, alpha),
        pladis_scaled_dot_product_attention(q, k, v, 2.0, alpha),
        atol=2e-5,
        rtol=1e-4,
    )


@pytest.mark.parametrize("text_first", [True, False])
def test_reference_text_block_matches_fast_path(text_first):
    q, k, v = (torch.randn(1, 2, 40, 16, generator=torch.Generator().manual_seed(i)) for i in range(3))
    expected = reference_text_block(q, k, v, 12, 2.0, 1.5, text_first=text_first)
    ours = text_block_pladis_attention(q, k, v, 12, 2.0, 1.5, text_first=text_first)
    torch.testing.assert_close(ours, expected, atol=2e-5, rtol=1e-4)


def test_reference_formulation_is_an_explicit_per_context_seam():
    """Inside `reference_formulation()` both seams compute the reference itself (bit for bit), and the
    context ends on exit, also on errors: nothing is patched."""
    q, k, v = (torch.randn(1, 2, 40, 16, generator=torch.Generator().manual_seed(i)) for i in range(3))
    fast_joint, fast_cross = (
        text_block_pladis_attention(q, k, v, 12, 2.0),
        pladis_scaled_dot_product_attention(q, k, v, 2.0),
    )
    with pytest.raises(RuntimeError):
        with benchmark.reference_formulation():
            assert torch.equal(text_block_pladis_attention(q, k, v, 12, 2.0), reference_text_block(q, k, v, 12, 2.0))
            assert torch.equal(pladis_scaled_dot_product_attention(q, k, v, 2.0), reference_pladis_sdpa(q, k, v, 2.0))
            raise RuntimeError("inside")
    assert not computing_reference()
    assert torch.equal(text_block_pladis_attention(q, k, v, 12, 2.0), fast_joint)
    assert torch.equal(pladis_scaled_dot_product_attention(q, k, v, 2.0), fast_cross)
    assert not torch.equal(fast_joint, reference_text_block(q, k, v, 12, 2.0))  # so the checks above can tell


def test_unknown_case_is_rejected(capsys):
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--cases", "sdxl-attention,nope"])
    assert "--cases" in capsys.readouterr().err


def test_kernels_option_takes_distinct_pladis_kernel_values(capsys):
    assert benchmark.parse_args(["--kernels", "torch,triton"]).kernels == ["torch", "triton"]
    for bad in ("torch,torch", "cuda"):
        with pytest.raises(SystemExit):
            benchmark.parse_args(["--kernels", bad])
        assert "--kernels" in capsys.readouterr().err


def test_per_kernel_variants_run_pladis_under_each_kernel(monkeypatch):
    import os

    monkeypatch.delenv("PLADIS_KERNEL", raising=False)
    seen = []
    runs = {
        "stock": lambda: "s",
        "pladis": lambda: seen.append(os.environ.get("PLADIS_KERNEL")),
        "reference": lambda: "r",
    }
    variants = benchmark.per_kernel(runs, ["auto", "torch"])
    assert list(variants) == ["stock", "pladis", "pladis-torch", "reference"]
    variants["pladis"](), variants["pladis-torch"]()
    assert seen == ["auto", "torch"] and "PLADIS_KERNEL" not in os.environ


def test_counts_show_the_torch_path_sync_free_and_the_cpu_path_syncing():
    q, k, v = (torch.randn(1, 2, n, 16) for n in (64, 77, 77))
    with benchmark.kernel_selected("torch"):
        launches, syncs = benchmark.launches_and_syncs(lambda: pladis_scaled_dot_product_attention(q, k, v, 2.0), "cpu")
    assert syncs == 0 and 0 < launches <= 40
    with benchmark.kernel_selected("auto"):
        _, syncs = benchmark.launches_and_syncs(lambda: pladis_scaled_dot_product_attention(q, k, v, 2.0), "cpu")
    assert syncs > 0  # the CPU path's pass loop asks the host (free on a CPU)


def test_gpu_check_options_parse_and_skip_tests_needs_gpu_check(capsys):
    args = benchmark.parse_args(["--device", "cuda", "--gpu-check", "--skip-tests"])
    assert args.gpu_check and args.skip_tests and args.device == "cuda"
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--skip-tests"])
    assert "--gpu-check" in capsys.readouterr().err
    assert {case for case, _ in benchmark.GPU_CHECK_RUNS} == set(benchmark.CASES)
    assert all(Path(benchmark.__file__).parent.parent.joinpath(path).is_file() for path in benchmark.GPU_CHECK_TESTS)
