"""`PLADIS_KERNEL` picks the implementation: auto / triton / torch, clear errors, and under `auto` one
warning and the torch path when a Triton kernel does not compile — only then (the launch and sync counts
of each path, on fake CUDA tensors: `tests/attention/kernels/test_fake_cuda.py`)."""

from __future__ import annotations

import ast
import warnings

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLPipeline

from attention import kernel_choice, pladis_scaled_dot_product_attention
from attention.kernel_choice import choose_kernel, run_triton
from pipeline.pipeline_sdxl import PLADISStableDiffusionXLPipeline
from pipeline.pipeline_sdxl_seg import PLADISStableDiffusionXLSEGPipeline
from scripts.cli.assets import TINY_SDXL
from tests.attention_cases import attention_case
from tests.tiny import CallCounter, run_pipe

CUDA = torch.device("cuda")  # a device object only: nothing here runs on CUDA
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _fresh_fallbacks(monkeypatch):
    monkeypatch.setattr(kernel_choice, "_failed_triton", set())


def test_default_is_auto(monkeypatch):
    monkeypatch.delenv("PLADIS_KERNEL", raising=False)
    assert kernel_choice.requested_kernel() == "auto"


def test_auto_picks_triton_on_cuda_when_covered_and_the_cpu_path_on_cpu(monkeypatch):
    monkeypatch.setenv("PLADIS_KERNEL", "auto")
    assert choose_kernel("cross-attention", CUDA, None) == "triton"
    assert choose_kernel("cross-attention", CUDA, "600 keys") == "torch"
    assert choose_kernel("cross-attention", CPU, None) == "chunked"


def test_torch_is_the_sync_free_path_everywhere(monkeypatch):
    monkeypatch.setenv("PLADIS_KERNEL", "torch")
    assert choose_kernel("text-block", CUDA, None) == choose_kernel("text-block", CPU, None) == "torch"


@pytest.mark.parametrize("value", ["cuda", "Triton2", "1"])
def test_unknown_values_name_the_variable_and_the_accepted_values(monkeypatch, value):
    monkeypatch.setenv("PLADIS_KERNEL", value)
    with pytest.raises(ValueError, match=r"PLADIS_KERNEL must be one of auto, triton, torch"):
        choose_kernel("cross-attention", CUDA, None)
    q, k, v, _, _ = attention_case("random")
    with pytest.raises(ValueError, match="PLADIS_KERNEL"):
        pladis_scaled_dot_product_attention(q, k, v, 2.0)


@pytest.mark.parametrize("cls", [PLADISStableDiffusionXLPipeline, PLADISStableDiffusionXLSEGPipeline])
def test_a_bad_value_leaves_scale_zero_calls_the_stock_pipeline_and_fails_others_before_the_unet(monkeypatch, cls):
    pipe = cls.from_pretrained(TINY_SDXL, local_files_only=True)
    stock = run_pipe(StableDiffusionXLPipeline.from_pipe(pipe), num_inference_steps=1)
    monkeypatch.setenv("PLADIS_KERNEL", "fastest")
    assert np.array_equal(run_pipe(pipe, num_inference_steps=1, pladis_scale=0.0), stock)
    counter = CallCounter(pipe.unet)
    with pytest.raises(ValueError, match="PLADIS_KERNEL must be one of auto, triton, torch"):
        run_pipe(pipe, num_inference_steps=1, pladis_scale=2.0)
    counter.remove()
    assert counter.count == 0


def test_explicit_triton_that_cannot_run_raises_instead_of_falling_back(monkeypatch):
    monkeypatch.setenv("PLADIS_KERNEL", "triton")
    with pytest.raises(ValueError, match=r"PLADIS_KERNEL=triton cannot run .*600 keys"):
        choose_kernel("cross-attention", CUDA, "600 keys")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match=r"PLADIS_KERNEL=triton .*tensors are on cpu"):
        choose_kernel("cross-attention", CPU, None)
    q, k, v, _, _ = attention_case("random")
    with pytest.raises(ValueError, match="PLADIS_KERNEL=triton .*pladis_alpha=1.3"):
        pladis_scaled_dot_product_attention(q, k, v, 2.0, 1.3)


def _compile_errors():
    """One instance of each exception Triton raises when a kernel cannot be built for the GPU."""
    from triton.compiler.errors import CompilationError
    from triton.runtime.errors import OutOfResources, PTXASError

    node = ast.parse("tl.dot(a, b)").body[0]
    return {
        "compilation": CompilationError("tl.dot(a, b)", node, "bf16 dots need sm80"),
        "out-of-resources": OutOfResources(232448, 101376, "shared memory"),
        "ptxas": PTXASError("ptxas fatal: Unresolved extern function"),
    }


def _raising(error: BaseException):
    def kernel():
        raise error

    return kernel


@pytest.mark.parametrize("failure", sorted(_compile_errors()))
def test_auto_falls_back_once_with_one_warning_when_the_kernel_fails_to_compile(monkeypatch, failure):
    monkeypatch.setenv("PLADIS_KERNEL", "auto")
    broken = _raising(_compile_errors()[failure])
    with pytest.warns(RuntimeWarning, match="Triton cross-attention kernel does not compile"):
        assert run_triton("cross-attention", broken, lambda: "torch result") == "torch result"
    assert choose_kernel("cross-attention", CUDA, None) == "torch"  # not tried again in this process
    assert choose_kernel("text-block", CUDA, None) == "triton"  # the other kernel still is
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert choose_kernel("cross-attention", CUDA, None) == "torch"


@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("CUDA error: an illegal memory access was encountered"),
        ValueError("pointer argument cannot be accessed from Triton (cpu tensor?)"),
    ],
    ids=["out-of-memory", "launch-error", "bad-argument"],
)
def test_auto_lets_runtime_errors_through_and_keeps_triton(monkeypatch, error):
    """Only a kernel that cannot be built falls back: out of memory or a failed launch is the caller's
    error to see (the torch path would hit it too, or hide a bug), and Triton stays chosen."""
    monkeypatch.setenv("PLADIS_KERNEL", "auto")
    fallback_calls = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(type(error), match=str(error)[:20]):
            run_triton("cross-attention", _raising(error), lambda: fallback_calls.append(1))
    assert fallback_calls == []
    assert choose_kernel("cross-attention", CUDA, None) == "triton"


def test_explicit_triton_lets_a_compile_failure_through(monkeypatch):
    monkeypatch.setenv("PLADIS_KERNEL", "triton")
    with pytest.raises(type(_compile_errors()["out-of-resources"]), match="out of resource"):
        run_triton("cross-attention", _raising(_compile_errors()["out-of-resources"]), lambda: None)


@pytest.mark.parametrize("kernel", ["torch", "triton"])
@pytest.mark.parametrize("alpha", [1.5, 2.0])
def test_every_kernel_gives_the_cpu_path_result_through_the_seam(monkeypatch, kernel, alpha):
    q, k, v, mask, scale = attention_case("masked")
    monkeypatch.setenv("PLADIS_KERNEL", "auto")
    expected = pladis_scaled_dot_product_attention(q, k, v, 2.0, alpha, attn_mask=mask, scale=scale)
    monkeypatch.setenv("PLADIS_KERNEL", kernel)
    ours = pladis_scaled_dot_product_attention(q, k, v, 2.0, alpha, attn_mask=mask, scale=scale)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


def test_apply_pladis_refuses_a_bad_pladis_kernel_before_the_call_starts(monkeypatch, tiny_sdxl_path):
    from diffusers import StableDiffusionXLPipeline

    from attention import apply_pladis

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_path, local_files_only=True)
    before = dict(pipe.unet.attn_processors)
    monkeypatch.setenv("PLADIS_KERNEL", "gpu")
    with pytest.raises(ValueError, match="PLADIS_KERNEL"):
        with apply_pladis(pipe, 2.0):
            raise AssertionError("the body must not run")
    assert all(pipe.unet.attn_processors[name] is processor for name, processor in before.items())
