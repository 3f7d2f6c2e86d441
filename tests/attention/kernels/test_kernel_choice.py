"""Which implementation computes a PLADIS rule: the one kernel table (`attention.kernels.table`), its one choice
for both seams, the call's own choice (`PLADISSettings.kernel`) over the user's `PLADIS_KERNEL`, clear errors, and
under `auto` one warning and the torch path when a Triton kernel does not compile — only then (the launch and sync
counts of each path, on fake CUDA tensors: `tests/attention/kernels/test_fake_cuda.py`)."""

from __future__ import annotations

import ast
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLPipeline

from attention import apply_pladis, pladis_scaled_dot_product_attention, text_block_pladis_attention
from attention.kernels import table as kernel_table
from attention.kernels import triton_kernels
from attention.kernels.reference import reference_pladis_sdpa, reference_text_block
from attention.kernels.table import (
    CROSS_ATTENTION,
    KERNEL_CHOICES,
    KERNELS,
    TEXT_BLOCK,
    KernelCase,
    choose_kernel,
    run_kernel,
)
from attention.settings import PLADISSettings
from pipeline.pipeline_sdxl import PLADISStableDiffusionXLPipeline
from pipeline.pipeline_sdxl_seg import PLADISStableDiffusionXLSEGPipeline
from scripts.cli.assets import TINY_SDXL
from tests.attention_cases import attention_case
from tests.fake_cuda import fake_cuda
from tests.tiny import CallCounter, run_pipe
from tests.tiny_denoisers import DENOISERS

REPOSITORY = Path(__file__).resolve().parents[3]
BY_NAME = {kernel.name: kernel for kernel in KERNELS}


@pytest.fixture(autouse=True)
def _fresh_fallbacks(monkeypatch):
    monkeypatch.setattr(kernel_table, "_failed", set())


def _case(device: str = "cuda", rule: str = CROSS_ATTENTION, keys: int = 77, **settings) -> KernelCase:
    """One call of `rule` as the choice sees it, on a (fake, for "cuda") query of `device`."""
    with fake_cuda():
        query = torch.empty(2, 2, 64, 16, device=device)
    return KernelCase(rule, query, keys, 16, None, PLADISSettings(2.0, **settings))


def _chosen(device: str = "cuda", rule: str = CROSS_ATTENTION, keys: int = 77, **settings) -> str:
    return choose_kernel(_case(device, rule, keys, **settings)).name


def test_each_kernel_is_registered_once_with_both_rules():
    assert len(BY_NAME) == len(KERNELS) == 5
    assert set(KERNEL_CHOICES) == {"auto", *BY_NAME}
    for kernel in KERNELS:
        assert callable(kernel.function(CROSS_ATTENTION)) and callable(kernel.function(TEXT_BLOCK)), kernel.name


def test_default_is_auto(monkeypatch):
    monkeypatch.delenv("PLADIS_KERNEL", raising=False)
    assert kernel_table.requested_kernel() == "auto"


def test_auto_picks_triton_on_cuda_when_covered_and_the_cpu_path_on_cpu(monkeypatch):
    monkeypatch.setenv("PLADIS_KERNEL", "auto")
    assert _chosen() == _chosen(rule=TEXT_BLOCK) == "triton"
    assert _chosen(keys=600) == "torch"
    assert _chosen("cpu") == _chosen("cpu", TEXT_BLOCK) == "chunked"


def test_torch_is_the_sync_free_path_everywhere(monkeypatch):
    monkeypatch.setenv("PLADIS_KERNEL", "torch")
    assert _chosen(rule=TEXT_BLOCK) == _chosen("cpu", TEXT_BLOCK) == "torch"


def test_autograd_and_the_reference_take_the_call_over_whatever_is_asked(monkeypatch):
    monkeypatch.setenv("PLADIS_KERNEL", "triton")
    autograd = _case()
    autograd = KernelCase(CROSS_ATTENTION, autograd.query, 77, 16, None, autograd.settings, autograd=True)
    assert choose_kernel(autograd).name == "autograd"
    assert _chosen(kernel="reference") == _chosen("cpu", TEXT_BLOCK, kernel="reference") == "reference"


def test_the_calls_own_choice_wins_over_pladis_kernel(monkeypatch):
    monkeypatch.setenv("PLADIS_KERNEL", "triton")
    assert _chosen("cpu", kernel="torch") == "torch"
    monkeypatch.setenv("PLADIS_KERNEL", "not-a-kernel")  # never read when the call chose
    assert _chosen("cpu", kernel="chunked") == "chunked"
    assert _chosen(kernel="auto", keys=600) == "torch"


@pytest.mark.parametrize("value", ["cuda", "Triton2", "1", "chunked"])
def test_unknown_values_name_the_variable_and_the_accepted_values(monkeypatch, value):
    monkeypatch.setenv("PLADIS_KERNEL", value)
    with pytest.raises(ValueError, match=r"PLADIS_KERNEL must be one of auto, triton, torch"):
        _chosen()
    q, k, v, _, _ = attention_case("random")
    with pytest.raises(ValueError, match="PLADIS_KERNEL"):
        pladis_scaled_dot_product_attention(q, k, v, 2.0)


@pytest.mark.parametrize("value", ["fastest", "TORCH", 1])
def test_a_bad_kernel_setting_names_the_argument_and_the_choices(value):
    with pytest.raises(ValueError, match=r"kernel must be one of auto, reference, autograd, triton, torch, chunked"):
        PLADISSettings(2.0, kernel=value)


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
        _chosen(keys=600)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match=r"PLADIS_KERNEL=triton .*tensors are on cpu"):
        _chosen("cpu")
    q, k, v, _, _ = attention_case("random")
    with pytest.raises(ValueError, match="PLADIS_KERNEL=triton .*pladis_alpha=1.3"):
        pladis_scaled_dot_product_attention(q, k, v, 2.0, 1.3)
    monkeypatch.delenv("PLADIS_KERNEL")
    with pytest.raises(ValueError, match=r"PLADISSettings\(kernel='triton'\) cannot run .*pladis_alpha=1.3"):
        pladis_scaled_dot_product_attention(q, k, v, PLADISSettings(2.0, 1.3, kernel="triton"))


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
    def kernel(*arguments):
        raise error

    return kernel


@pytest.fixture
def torch_path_calls(monkeypatch) -> list[int]:
    """The table's sync-free kernel with a cross-attention stub that records its calls and answers "torch result"."""
    calls = []
    stub = replace(BY_NAME["torch"], cross_attention=lambda call: calls.append(1) or "torch result")
    monkeypatch.setitem(kernel_table._BY_NAME, "torch", stub)
    return calls


@pytest.mark.parametrize("failure", sorted(_compile_errors()))
def test_auto_falls_back_once_with_one_warning_when_the_kernel_fails_to_compile(monkeypatch, failure, torch_path_calls):
    monkeypatch.setenv("PLADIS_KERNEL", "auto")
    monkeypatch.setattr(triton_kernels, "triton_pladis_attention", _raising(_compile_errors()[failure]))
    with pytest.warns(RuntimeWarning, match="Triton cross-attention kernel does not compile"):
        assert run_kernel(BY_NAME["triton"], _case(), None) == "torch result"
    assert _chosen() == "torch"  # not tried again in this process
    assert _chosen(rule=TEXT_BLOCK) == "triton"  # the other rule's kernel still is
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _chosen() == "torch"


@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("CUDA error: an illegal memory access was encountered"),
        ValueError("pointer argument cannot be accessed from Triton (cpu tensor?)"),
    ],
    ids=["out-of-memory", "launch-error", "bad-argument"],
)
def test_auto_lets_runtime_errors_through_and_keeps_triton(monkeypatch, error, torch_path_calls):
    """Only a kernel that cannot be built falls back: out of memory or a failed launch is the caller's
    error to see (the torch path would hit it too, or hide a bug), and Triton stays chosen."""
    monkeypatch.setenv("PLADIS_KERNEL", "auto")
    monkeypatch.setattr(triton_kernels, "triton_pladis_attention", _raising(error))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(type(error), match=str(error)[:20]):
            run_kernel(BY_NAME["triton"], _case(), None)
    assert torch_path_calls == []
    assert _chosen() == "triton"


@pytest.mark.parametrize("asked", ["PLADIS_KERNEL", "settings"])
def test_explicit_triton_lets_a_compile_failure_through(monkeypatch, asked, torch_path_calls):
    monkeypatch.setattr(triton_kernels, "triton_pladis_attention", _raising(_compile_errors()["out-of-resources"]))
    if asked == "PLADIS_KERNEL":
        monkeypatch.setenv("PLADIS_KERNEL", "triton")
        case = _case()
    else:
        case = _case(kernel="triton")
    with pytest.raises(type(_compile_errors()["out-of-resources"]), match="out of resource"):
        run_kernel(BY_NAME["triton"], case, None)
    assert torch_path_calls == []


@pytest.mark.parametrize("kernel", sorted(BY_NAME))
@pytest.mark.parametrize("alpha", [1.5, 2.0])
def test_every_kernel_in_the_table_gives_the_reference_through_both_seams(kernel, alpha):
    """A new kernel in the table is checked here: each computes both rules on CPU (Triton in its interpreter)."""
    q, k, v, mask, scale = attention_case("masked")
    settings = PLADISSettings(2.0, alpha, kernel=kernel)
    cross = pladis_scaled_dot_product_attention(q, k, v, settings, attn_mask=mask, scale=scale)
    expected = reference_pladis_sdpa(q, k, v, 2.0, alpha, mask, scale)
    torch.testing.assert_close(cross, expected, rtol=1e-5, atol=1e-5)
    joint_q, joint_k, joint_v = (
        torch.randn(1, 2, 40, 16, generator=torch.Generator().manual_seed(i)) for i in range(3)
    )
    joint = text_block_pladis_attention(joint_q, joint_k, joint_v, 12, settings, text_first=False)
    expected = reference_text_block(joint_q, joint_k, joint_v, 12, 2.0, alpha, text_first=False)
    torch.testing.assert_close(joint, expected, rtol=1e-4, atol=2e-5)


def test_the_settings_kernel_travels_from_apply_pladis_to_the_kernel(monkeypatch):
    """`apply_pladis` with a `PLADISSettings(kernel=...)` runs that kernel in every PLADIS layer of the call (here
    the sync-free torch path on CPU, where `auto` picks the chunked one), and nothing else."""
    tiny = DENOISERS["chroma"]
    model, inputs = tiny.build(), tiny.inputs(0)
    calls = []
    sync_free = BY_NAME["torch"]
    recording = replace(
        sync_free, text_block=lambda call: calls.append(call.settings.kernel) or sync_free.text_block(call)
    )
    monkeypatch.setitem(kernel_table._BY_NAME, "torch", recording)
    monkeypatch.setattr(kernel_table, "KERNELS", tuple(recording if k is sync_free else k for k in KERNELS))
    with torch.no_grad():
        with apply_pladis(model, PLADISSettings(2.0)):
            chunked = model(**inputs).sample
        assert calls == []
        with apply_pladis(model, PLADISSettings(2.0, kernel="torch")):
            synced_free = model(**inputs).sample
    assert calls and set(calls) == {"torch"}
    torch.testing.assert_close(synced_free, chunked, rtol=1e-4, atol=1e-5)


def test_concurrent_calls_on_one_denoiser_each_run_their_own_settings_kernel(monkeypatch):
    """The kernel is per call: three threads sharing one denoiser, each with its own `PLADISSettings(kernel=...)`,
    started together, each run only their kernel and get the output the same call gives alone; the processors end
    as they started."""
    import threading

    tiny = DENOISERS["chroma"]
    model, inputs = tiny.build(), tiny.inputs(0)
    before = dict(model.attn_processors)
    seen: dict[int, set[str]] = {}

    def recording(kernel):
        def text_block(call):
            seen.setdefault(threading.get_ident(), set()).add(kernel.name)
            return kernel.text_block(call)

        return replace(kernel, text_block=text_block)

    recorded = {name: recording(BY_NAME[name]) for name in ("torch", "chunked", "reference")}
    for name, kernel in recorded.items():
        monkeypatch.setitem(kernel_table._BY_NAME, name, kernel)
    monkeypatch.setattr(kernel_table, "KERNELS", tuple(recorded.get(k.name, k) for k in KERNELS))

    def run(kernel: str) -> torch.Tensor:
        with torch.no_grad(), apply_pladis(model, PLADISSettings(2.0, kernel=kernel)):
            return model(**inputs).sample

    alone = {kernel: run(kernel) for kernel in recorded}
    seen.clear()
    start, results, kernels_of = threading.Barrier(len(recorded)), {}, {}

    def worker(kernel: str) -> None:
        start.wait()
        for _ in range(3):
            results.setdefault(kernel, []).append(run(kernel))
        kernels_of[kernel] = seen.get(threading.get_ident(), set())

    threads = [threading.Thread(target=worker, args=(kernel,)) for kernel in recorded]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert kernels_of == {kernel: {kernel} for kernel in recorded}
    for kernel, outputs in results.items():
        assert len(outputs) == 3
        for output in outputs:
            torch.testing.assert_close(output, alone[kernel], rtol=0, atol=0)
    assert model.attn_processors == before


def test_settings_in_place_of_scale_refuse_other_pladis_arguments():
    q, k, v, _, _ = attention_case("random")
    with pytest.raises(TypeError, match="pladis_alpha given beside a PLADISSettings"):
        pladis_scaled_dot_product_attention(q, k, v, PLADISSettings(2.0), 2.0)
    with pytest.raises(TypeError, match="pladis_stop given beside a PLADISSettings"):
        apply_pladis(DENOISERS["chroma"].build(), PLADISSettings(2.0), pladis_stop=0.5)


def _writes_to_the_environment(tree: ast.AST) -> list[int]:
    """Lines of `os.environ[...] = ...`, `del os.environ[...]`, `os.environ.<mutating method>(...)`, `os.putenv`."""
    lines = []
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else []
        targets += [node.target] if isinstance(node, ast.AugAssign) else []
        for target in targets:
            if isinstance(target, ast.Subscript) and ast.unparse(target.value) == "os.environ":
                lines.append(node.lineno)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            called = ast.unparse(node.func)
            mutating = ("setdefault", "pop", "popitem", "update", "clear", "__setitem__")
            if called == "os.putenv" or called in {f"os.environ.{name}" for name in mutating}:
                lines.append(node.lineno)
    return lines


def test_no_source_writes_the_environment():
    """Kernels (and everything else) are chosen per call, never by writing `os.environ` (tests use monkeypatch)."""
    writes = {
        str(path.relative_to(REPOSITORY)): lines
        for folder in ("attention", "pipeline", "scripts")
        for path in sorted((REPOSITORY / folder).rglob("*.py"))
        if (lines := _writes_to_the_environment(ast.parse(path.read_text(), str(path))))
    }
    assert writes == {}


def test_apply_pladis_refuses_a_bad_pladis_kernel_before_the_call_starts(monkeypatch, tiny_sdxl_path):
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_path, local_files_only=True)
    before = dict(pipe.unet.attn_processors)
    monkeypatch.setenv("PLADIS_KERNEL", "gpu")
    with pytest.raises(ValueError, match="PLADIS_KERNEL"):
        with apply_pladis(pipe, 2.0):
            raise AssertionError("the body must not run")
    assert all(pipe.unet.attn_processors[name] is processor for name, processor in before.items())
