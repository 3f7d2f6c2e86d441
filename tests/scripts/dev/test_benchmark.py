"""The benchmark compares like with like: its reference formulations (materialised maps and the
`entmax` package) compute what our fast paths compute, and its options are checked."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from attention import pladis_scaled_dot_product_attention, text_block_pladis_attention
from attention.kernels.reference import reference_pladis_sdpa, reference_text_block
from attention.settings import PLADISSettings
from scripts.dev import benchmark


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


def test_the_reference_kernel_is_the_reference_itself_for_the_call_that_asks():
    """`PLADISSettings(kernel="reference")` makes both seams compute the reference itself (bit for bit), for that
    call only: nothing is patched, no state outlives the call."""
    q, k, v = (torch.randn(1, 2, 40, 16, generator=torch.Generator().manual_seed(i)) for i in range(3))
    fast_joint, fast_cross = (
        text_block_pladis_attention(q, k, v, 12, 2.0),
        pladis_scaled_dot_product_attention(q, k, v, 2.0),
    )
    reference = PLADISSettings(2.0, kernel="reference")
    assert torch.equal(text_block_pladis_attention(q, k, v, 12, reference), reference_text_block(q, k, v, 12, 2.0))
    assert torch.equal(pladis_scaled_dot_product_attention(q, k, v, reference), reference_pladis_sdpa(q, k, v, 2.0))
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


def test_per_kernel_variants_run_pladis_with_each_kernel_in_its_settings(monkeypatch):
    monkeypatch.delenv("PLADIS_KERNEL", raising=False)
    args = SimpleNamespace(pladis_scale=2.0, pladis_alpha=1.5)
    seen = []

    def pladis(kernel):
        processor = benchmark.PLADISAttnProcessor(benchmark._settings(args, kernel))
        return lambda: seen.append(processor._fixed.settings.kernel)

    variants = benchmark.per_kernel(lambda: "s", pladis, ["auto", "torch"])
    assert list(variants) == ["stock", "pladis", "pladis-torch", "reference"]
    variants["pladis"](), variants["pladis-torch"](), variants["reference"]()
    assert seen == ["auto", "torch", "reference"]


def test_counts_show_the_torch_path_sync_free_and_the_cpu_path_syncing():
    q, k, v = (torch.randn(1, 2, n, 16) for n in (64, 77, 77))
    sync_free, chunked = PLADISSettings(2.0, kernel="torch"), PLADISSettings(2.0, kernel="auto")
    launches, syncs = benchmark.launches_and_syncs(
        lambda: pladis_scaled_dot_product_attention(q, k, v, sync_free), "cpu"
    )
    assert syncs == 0 and 0 < launches <= 40
    _, syncs = benchmark.launches_and_syncs(lambda: pladis_scaled_dot_product_attention(q, k, v, chunked), "cpu")
    assert syncs > 0  # the CPU path's pass loop asks the host (free on a CPU)


def test_gpu_check_options_parse_and_skip_tests_needs_gpu_check(capsys):
    args = benchmark.parse_args(["--gpu-check", "--skip-tests", "--dry-run"])
    assert args.gpu_check and args.skip_tests and args.device == "cuda"  # --gpu-check means the GPU
    assert benchmark.parse_args([]).device == "cpu"
    refused = {
        "--gpu-check": (["--skip-tests"], ["--dry-run"]),
        "--shards": (["--gpu-check", "--dry-run", "--shards", "0"],),
    }
    for named, bad_options in refused.items():
        for bad in bad_options:
            with pytest.raises(SystemExit):
                benchmark.parse_args(bad)
            assert named in capsys.readouterr().err
    assert {case for case, _ in benchmark.GPU_CHECK_RUNS} == set(benchmark.CASES)
    assert all(benchmark.REPO_ROOT.joinpath(path).is_file() for path in benchmark.GPU_CHECK_TESTS)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where no GPU is")
def test_gpu_check_without_a_gpu_refuses_before_running_anything(capsys):
    with pytest.raises(SystemExit):
        benchmark.main(["--gpu-check"])
    error = capsys.readouterr().err
    assert "--gpu-check needs a CUDA GPU" in error and "--dry-run" in error


def test_gpu_check_dry_run_prints_every_shard_and_table_and_runs_nothing(capsys, monkeypatch):
    monkeypatch.setattr(benchmark.subprocess, "Popen", None)  # a run would fail loudly
    assert benchmark.main(["--gpu-check", "--dry-run", "--shards", "3", "--repeats", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    shards = [line for line in lines if "-m pytest" in line]
    assert [line.split("--shard ")[1].split()[0] for line in shards] == ["1/3", "2/3", "3/3"]
    assert all(line.endswith(" ".join(benchmark.GPU_CHECK_TESTS)) and "tests.sharding" in line for line in shards)
    table_lines = [line.split("-m scripts.dev.benchmark ")[1] for line in lines if "-m scripts.dev.benchmark" in line]
    tables = [benchmark.parse_args(line.split()) for line in table_lines]
    assert [(table.cases, table.dtype_name) for table in tables] == list(benchmark.GPU_CHECK_RUNS)
    assert all(t.device == "cuda" and t.counts and t.kernels == ["torch", "triton"] and t.repeats == 2 for t in tables)


def test_flux_module_case_has_the_image_tokens_of_its_resolution(monkeypatch):
    """1024² is 64 × 64 packed latent patches: 4,096 image tokens next to 512 text tokens."""
    import diffusers.models.transformers.transformer_flux as transformer_flux

    monkeypatch.setattr(transformer_flux, "FluxAttention", lambda **config: torch.nn.Identity())
    monkeypatch.setattr(benchmark, "_module_variants", lambda attn, stock, ours, *inputs: inputs)
    image, text = benchmark.flux_attention_case(benchmark.parse_args([]))
    assert image.shape[1] == 4096 and text.shape[1] == 512
    image, _ = benchmark.flux_attention_case(benchmark.parse_args(["--resolution", "512"]))
    assert image.shape[1] == 1024


def test_device_test_shards_partition_the_tests_in_contiguous_slices():
    from tests.sharding import parse_shard, pytest_collection_modifyitems, shard_slice

    for total in range(0, 40):
        for count in range(1, 10):
            slices = [range(total)[shard_slice(total, index, count)] for index in range(1, count + 1)]
            assert [item for part in slices for item in part] == list(range(total))
            assert max(map(len, slices)) - min(map(len, slices)) <= 1
    assert parse_shard("2/8") == (2, 8)
    for bad in ("0/8", "9/8", "2", "a/b"):
        with pytest.raises(ValueError, match="--shard"):
            parse_shard(bad)

    deselected = []
    config = SimpleNamespace(
        getoption=lambda name: "2/3", hook=SimpleNamespace(pytest_deselected=lambda items: deselected.extend(items))
    )
    items = list("abcdefg")
    pytest_collection_modifyitems(config, items)
    assert items == list("cd") and sorted(deselected) == list("abefg")


def test_sdpa_backend_report_names_the_kernel_for_each_production_shape():
    """The GPU check's lines on which SDPA kernel stock runs (here on fake tensors of an H100: torch's own
    choice cannot be asked, only the mirrored one is meaningful)."""
    from tests.fake_cuda import fake_cuda

    with fake_cuda((9, 0)):
        lines = benchmark.sdpa_backend_report("cuda")
    assert len(lines) == 4 and all(line.startswith("# stock SDPA, ") for line in lines)
    assert "FLUX joint" in lines[1] and "mirrors cudnn" in lines[1]
