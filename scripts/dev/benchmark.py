"""Benchmark PLADIS against stock attention and against the reference formulation, in one run.

Prints ratios measured here, never asserted anywhere: wall time (interleaved rounds after warm-up,
medians) and extra peak memory (allocator stats on GPU, RSS of fresh subprocesses on CPU), for
whole attention modules at SDXL / FLUX shapes and for one denoiser step of real-architecture
models built from their published configs with random weights (nothing is downloaded).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import torch

from attention.integration.install import pladis_processors, swapped_attn_processors
from attention.integration.processors import PLADISAttnProcessor, PLADISFluxAttnProcessor
from attention.kernels.table import KERNEL_CHOICES
from attention.settings import PLADISSettings
from scripts.cli.assets import REPO_ROOT
from scripts.cli.parsers import command_parser
from scripts.dev.dispatch_counter import count_dispatch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# Published architecture configs (stabilityai/stable-diffusion-xl-base-1.0 unet, black-forest-labs/FLUX.1-dev
# transformer).
SDXL_UNET_CONFIG = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
    norm_num_groups=32,
)
FLUX_TRANSFORMER_CONFIG = dict(
    patch_size=1,
    in_channels=64,
    num_layers=19,
    num_single_layers=38,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=4096,
    pooled_projection_dim=768,
    guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)


# The kernels `--kernels` times PLADIS with (`PLADISSettings.kernel`); the reference is always a variant of its own.
KERNELS = tuple(kernel for kernel in KERNEL_CHOICES if kernel != "reference")
Run = Callable[[], object]


def per_kernel(stock: Run, pladis: Callable[[str], Run], kernels: list[str]) -> dict[str, Run]:
    """The variants of a case: `stock`, PLADIS run by each of `kernels` (`pladis(kernel)`; `pladis` alone for
    `auto`), and the reference formulation (`pladis("reference")`: same processors, the reference kernel)."""
    variants = {"stock": stock}
    variants.update({"pladis" if kernel == "auto" else f"pladis-{kernel}": pladis(kernel) for kernel in kernels})
    variants["reference"] = pladis("reference")
    return variants


def _settings(args, kernel: str) -> PLADISSettings:
    """The benchmark's λ and α, computed by `kernel` (the call's own choice; `PLADIS_KERNEL` is not read)."""
    return PLADISSettings(args.pladis_scale, args.pladis_alpha, kernel=kernel)


# ---- the cases: each builds (run function per variant) on a device ---------------------------


def _module_variants(attn, stock, ours, *inputs) -> tuple[Run, Callable[[str], Run]]:
    """The stock run of an attention-module case (`stock` called on `attn` with `inputs`) and, per kernel, the
    run of the PLADIS processor `ours(kernel)`."""

    def run(processor) -> Run:
        return lambda: processor(attn, *inputs)

    return run(stock), lambda kernel: run(ours(kernel))


def sdxl_attention_case(args) -> tuple[Run, Callable[[str], Run]]:
    """One SDXL cross-attention module (640 channels, 10 heads × 64) at 1024²: 4096 queries, 77 keys, CFG batch."""
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    attn = Attention(640, cross_attention_dim=2048, heads=10, dim_head=64).to(args.device, args.dtype).eval()
    hidden = torch.randn(2, 4096, 640, device=args.device, dtype=args.dtype)
    context = torch.randn(2, 77, 2048, device=args.device, dtype=args.dtype)
    return _module_variants(
        attn, AttnProcessor2_0(), lambda kernel: PLADISAttnProcessor(_settings(args, kernel)), hidden, context
    )


def flux_attention_case(args) -> tuple[Run, Callable[[str], Run]]:
    """One FLUX double-stream attention module (24 heads × 128) over 512 text + (--resolution / 16)² image
    tokens: 4,096 at 1024²."""
    from diffusers.models.transformers.transformer_flux import FluxAttention, FluxAttnProcessor

    attn = (
        FluxAttention(
            query_dim=3072, heads=24, dim_head=128, added_kv_proj_dim=3072, bias=True, context_pre_only=False, eps=1e-6
        )
        .to(args.device, args.dtype)
        .eval()
    )
    image = torch.randn(1, (args.resolution // 16) ** 2, 3072, device=args.device, dtype=args.dtype)
    text = torch.randn(1, 512, 3072, device=args.device, dtype=args.dtype)
    return _module_variants(
        attn, FluxAttnProcessor(), lambda kernel: PLADISFluxAttnProcessor(_settings(args, kernel)), image, text
    )


def _with_processors(model, table_builder, call) -> Run:
    def run():
        with swapped_attn_processors(model, table_builder()) if table_builder else contextlib.nullcontext():
            return call()

    return run


def sdxl_unet_case(args) -> tuple[Run, Callable[[str], Run]]:
    """One SDXL UNet step (published architecture, random weights) on a CFG batch at --resolution."""
    from diffusers import UNet2DConditionModel

    with torch.device(args.device):  # random init on the device: seconds instead of minutes on a GPU
        unet = UNet2DConditionModel(**SDXL_UNET_CONFIG).to(args.dtype).eval()
    latent = args.resolution // 8
    inputs = dict(
        sample=torch.randn(2, 4, latent, latent, device=args.device, dtype=args.dtype),
        timestep=torch.tensor(500, device=args.device),
        encoder_hidden_states=torch.randn(2, 77, 2048, device=args.device, dtype=args.dtype),
        added_cond_kwargs={
            "text_embeds": torch.randn(2, 1280, device=args.device, dtype=args.dtype),
            "time_ids": torch.tensor(
                [[args.resolution] * 2 + [0, 0] + [args.resolution] * 2] * 2, device=args.device, dtype=args.dtype
            ),
        },
    )
    call = lambda: unet(**inputs).sample  # noqa: E731
    return _with_processors(unet, None, call), lambda kernel: _with_processors(
        unet, lambda: pladis_processors(unet, _settings(args, kernel)), call
    )


def flux_transformer_case(args) -> tuple[Run, Callable[[str], Run]]:
    """One FLUX-dev transformer step (published widths, --flux-blocks double + single blocks) at --resolution."""
    from diffusers import FluxTransformer2DModel

    config = dict(FLUX_TRANSFORMER_CONFIG, num_layers=args.flux_blocks, num_single_layers=args.flux_blocks)
    with torch.device(args.device):
        transformer = FluxTransformer2DModel(**config).to(args.dtype).eval()
    side = args.resolution // 16
    axis = torch.arange(side, dtype=torch.float32)
    ids = torch.stack(torch.meshgrid(torch.zeros(1), axis, axis, indexing="ij"), -1)
    inputs = dict(
        hidden_states=torch.randn(1, side * side, 64, device=args.device, dtype=args.dtype),
        encoder_hidden_states=torch.randn(1, 512, 4096, device=args.device, dtype=args.dtype),
        pooled_projections=torch.randn(1, 768, device=args.device, dtype=args.dtype),
        timestep=torch.tensor([0.5], device=args.device, dtype=args.dtype),
        guidance=torch.tensor([3.5], device=args.device, dtype=args.dtype),
        img_ids=ids.reshape(-1, 3).to(args.device),
        txt_ids=torch.zeros(512, 3, device=args.device),
    )
    call = lambda: transformer(**inputs).sample  # noqa: E731
    return _with_processors(transformer, None, call), lambda kernel: _with_processors(
        transformer, lambda: pladis_processors(transformer, _settings(args, kernel)), call
    )


CASES = {
    "sdxl-attention": sdxl_attention_case,
    "flux-attention": flux_attention_case,
    "sdxl-unet": sdxl_unet_case,
    "flux-transformer": flux_transformer_case,
}


# ---- measurement ------------------------------------------------------------------------------


def progress(message: str) -> None:
    """One progress line on stderr (the tables stay alone on stdout), shown at once."""
    print(f"[benchmark] {message}", file=sys.stderr, flush=True)


def median_times(runs: dict[str, Callable[[], object]], args, case: str = "") -> dict[str, float]:
    """Median seconds per variant; variants alternate within every round so drift hits all alike. Reports each
    round, then each variant's min / median / max, as progress lines."""
    samples = {name: [] for name in runs}
    with torch.inference_mode():
        for number in range(args.warmup):
            progress(f"{case}: warm-up round {number + 1}/{args.warmup} ({', '.join(runs)})")
            for run in runs.values():
                run()
        for number in range(args.repeats):
            for name, run in runs.items():
                samples[name].append(_seconds(run, args.device))
            progress(f"{case}: timed round {number + 1}/{args.repeats}")
    for name, values in samples.items():
        progress(
            f"{case}: {name} ms min / median / max: {min(values) * 1e3:.2f} / {statistics.median(values) * 1e3:.2f} "
            f"/ {max(values) * 1e3:.2f} ({len(values)} runs)"
        )
    return {name: statistics.median(values) for name, values in samples.items()}


def _seconds(run: Callable[[], object], device: str) -> float:
    """One call's time: CUDA events on a GPU (device time, launches included), the wall clock elsewhere."""
    if device.startswith("cuda"):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        run()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1e3
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


_CUDA_SYNCS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")
_CUDA_LAUNCHES = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx")


def launches_and_syncs(run: Callable[[], object], device: str) -> tuple[int, int]:
    """(kernel launches, host–device syncs) of one call: from a `torch.profiler` trace on CUDA, from the
    dispatched ops (a launch proxy) on other devices."""
    with torch.inference_mode():
        if not device.startswith("cuda"):
            _, count = count_dispatch(run)
            return count.ops, count.syncs
        from torch.profiler import ProfilerActivity, profile

        run()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as trace:
            run()
        names = [event.name for event in trace.events()]
        return (
            sum(name.startswith(_CUDA_LAUNCHES) for name in names),
            sum(name.startswith(_CUDA_SYNCS) for name in names),
        )


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def _reset_peak_rss() -> None:
    """Start a new RSS high-water mark here (Linux: writing 5 to clear_refs resets VmHWM)."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


def _peak_rss_bytes() -> int:
    """VmHWM: this address space's RSS high-water mark (unlike ru_maxrss, not inherited over exec)."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def extra_peak_memory(runs: dict[str, Callable[[], object]], variant: str, args) -> int:
    """Peak memory of one call above what was held before it (GPU allocator, or this process's RSS)."""
    with torch.inference_mode():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            runs[variant]()
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - before
        before = _rss_bytes()
        _reset_peak_rss()
        runs[variant]()
        return _peak_rss_bytes() - before


def memory_in_subprocess(case: str, variant: str, argv: list[str]) -> int:
    """CPU peaks need a fresh process per variant (RSS high-water marks never go down)."""
    command = [sys.executable, "-m", "scripts.dev.benchmark", "--cases", case, "--memory-of", variant, *argv]
    result = subprocess.run(command, capture_output=True, text=True, check=True, cwd=REPO_ROOT)
    return json.loads(result.stdout.strip().splitlines()[-1])["extra_bytes"]


GPU_CHECK_TESTS = (
    "tests/attention/kernels/test_kernel_paths.py",
    "tests/attention/kernels/test_device_bf16_flux.py",
    "tests/pipeline/test_device_pipelines.py",
    "tests/attention/integration/test_compat_offload.py",
)
# (case, dtype) of `--gpu-check`: the attention modules and one denoiser step of SDXL (fp16) and FLUX (bf16).
GPU_CHECK_RUNS = (
    ("sdxl-attention", "float16"),
    ("flux-attention", "bfloat16"),
    ("sdxl-unet", "float16"),
    ("flux-transformer", "bfloat16"),
)
# Device-test processes run at once: each cold Triton compile (one per kernel specialisation) costs seconds
# of one CPU core, so shards overlap them (a GPU machine here has 16 cores).
GPU_CHECK_SHARDS = 8


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = command_parser(__doc__)
    parser.add_argument(
        "--cases",
        default="sdxl-attention,flux-attention",
        help=f"comma-separated, from {', '.join(CASES)} (the whole-model cases are heavy on CPU)",
    )
    parser.add_argument("--device", default=None, help="cpu (default) or cuda (default with --gpu-check)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument(
        "--kernels",
        default="auto",
        help=f"comma-separated kernels to time PLADIS with (PLADISSettings.kernel), from {', '.join(KERNELS)}",
    )
    parser.add_argument(
        "--counts",
        action="store_true",
        help="also count kernel launches and host syncs per call (profiler on CUDA, dispatched ops elsewhere)",
    )
    parser.add_argument(
        "--gpu-check",
        action="store_true",
        help="the one-command GPU check: kernel and pipeline tests on the device, then SDXL (fp16) and "
        "FLUX (bf16) modules and denoiser steps with the torch and triton kernels, with counts",
    )
    parser.add_argument("--skip-tests", action="store_true", help="with --gpu-check: only the timing tables")
    parser.add_argument(
        "--shards",
        type=int,
        default=GPU_CHECK_SHARDS,
        help="with --gpu-check: device-test processes run at once (their Triton compiles overlap)",
    )
    parser.add_argument("--dry-run", action="store_true", help="with --gpu-check: print what it would run, run nothing")
    parser.add_argument("--pladis-scale", type=float, default=2.0)
    parser.add_argument("--pladis-alpha", type=float, default=1.5)
    parser.add_argument("--resolution", type=int, default=1024, help="image side for the whole-model cases")
    parser.add_argument("--flux-blocks", type=int, default=2, help="double and single blocks of the FLUX case")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements")
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)  # internal: one CPU memory probe
    args = parser.parse_args(argv)
    unknown = sorted(set(args.cases.split(",")) - set(CASES))
    if unknown:
        parser.error(f"--cases: unknown {unknown}; choose from {sorted(CASES)}")
    args.kernels = args.kernels.split(",")
    if set(args.kernels) - set(KERNELS) or len(set(args.kernels)) != len(args.kernels):
        parser.error(f"--kernels: {','.join(args.kernels)!r} must list distinct values from {', '.join(KERNELS)}")
    if (args.skip_tests or args.dry_run) and not args.gpu_check:
        parser.error("--skip-tests and --dry-run go with --gpu-check")
    if args.shards < 1:
        parser.error(f"--shards must be at least 1, got {args.shards}")
    args.device = args.device or ("cuda" if args.gpu_check else "cpu")
    if args.gpu_check and not args.dry_run and not (args.device.startswith("cuda") and torch.cuda.is_available()):
        parser.error(
            f"--gpu-check needs a CUDA GPU (--device cuda on a machine with one), got --device {args.device} "
            f"with torch.cuda.is_available()={torch.cuda.is_available()}; --dry-run prints its plan anywhere"
        )
    args.dtype_name, args.dtype = args.dtype, DTYPES[args.dtype]
    return args


def run_table(args, argv: list[str]) -> None:
    """One table row per case: times, ratios to stock and to the reference, peak memory, counts."""
    print(
        f"# {time.strftime('%Y-%m-%d')}  device={_device_name(args.device)}  dtype={args.dtype_name}  "
        f"torch={torch.__version__}  threads={torch.get_num_threads()}  λ={args.pladis_scale}  α={args.pladis_alpha}"
    )
    for case in args.cases.split(","):
        progress(f"{case}: building the modules")
        runs = per_kernel(*CASES[case](args), args.kernels)
        names = list(runs)
        times = median_times(runs, args, case)
        stock, reference = times["stock"], times["reference"]
        ours = [name for name in names if name.startswith("pladis")]
        print(
            f"\n| {case} | "
            + " | ".join(f"{name} ms" for name in names)
            + " | "
            + " | ".join(f"{name}/stock" for name in ours)
            + " | reference/stock | "
            + " | ".join(f"{name}/reference" for name in ours)
            + " |"
        )
        print("|---" * (1 + len(names) + 2 * len(ours) + 1) + "|")
        print(
            "| time | "
            + " | ".join(f"{times[name] * 1e3:.2f}" for name in names)
            + " | "
            + " | ".join(f"{times[name] / stock:.3f}×" for name in ours)
            + f" | {reference / stock:.2f}× | "
            + " | ".join(f"{times[name] / reference:.2f}×" for name in ours)
            + " |",
            flush=True,
        )
        if args.counts:
            progress(f"{case}: counting launches and syncs")
            counts = [launches_and_syncs(runs[name], args.device) for name in names]
            print(
                "| launches / syncs per call | "
                + " | ".join(f"{launches} / {syncs}" for launches, syncs in counts)
                + " |" * (2 * len(ours) + 1),
                flush=True,
            )
        if not args.no_memory:
            if args.device.startswith("cuda"):
                peaks = [extra_peak_memory(runs, name, args) for name in names]
            else:
                del runs
                peaks = []
                for name in names:
                    progress(f"{case}: peak memory of {name} (a fresh process)")
                    peaks.append(memory_in_subprocess(case, name, _without_cases(argv)))
            print(
                "| extra peak MiB | "
                + " | ".join(f"{peak / 2**20:.0f}" for peak in peaks)
                + " |" * (2 * len(ours) + 1),
                flush=True,
            )


def _device_name(device: str) -> str:
    return torch.cuda.get_device_name(device) if device.startswith("cuda") else device


def gpu_check_commands(shards: int) -> list[list[str]]:
    """The pytest command of each shard of the device tests (`tests/sharding.py`)."""
    return [
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.sharding"]
        + ["--shard", f"{index}/{shards}", *GPU_CHECK_TESTS]
        for index in range(1, shards + 1)
    ]


def gpu_check_table_argv(args, case: str, dtype: str) -> list[str]:
    """The benchmark options of one `--gpu-check` table: both kernels, counts, 1 double + 1 single FLUX block."""
    return [
        *("--device", args.device, "--cases", case, "--dtype", dtype, "--kernels", "torch,triton", "--counts"),
        *("--resolution", str(args.resolution), "--flux-blocks", "1"),
        *("--warmup", str(args.warmup), "--repeats", str(args.repeats)),
        *("--pladis-scale", str(args.pladis_scale), "--pladis-alpha", str(args.pladis_alpha)),
        *(["--no-memory"] if args.no_memory else []),
    ]


def run_device_tests(device: str, shards: int) -> int:
    """The device tests as `shards` pytest processes at once on `device`; prints each one's summary (its
    whole output when it failed) and returns 0 if all passed."""
    environment = dict(os.environ, PLADIS_TEST_DEVICE=device)
    environment.pop("TRITON_INTERPRET", None)
    commands = gpu_check_commands(shards)
    print(f"# device tests: PLADIS_TEST_DEVICE={device}, {shards} shards of {' '.join(GPU_CHECK_TESTS)}", flush=True)
    status = 0
    with contextlib.ExitStack() as stack:
        logs = [stack.enter_context(tempfile.TemporaryFile("w+")) for _ in commands]
        processes = [
            subprocess.Popen(command, env=environment, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, text=True)
            for command, log in zip(commands, logs, strict=True)
        ]
        for index, (process, log) in enumerate(zip(processes, logs, strict=True), start=1):
            code = process.wait()
            log.seek(0)
            output = log.read()
            failed = code not in (0, 5)  # 5: this shard got no test
            status = status or (code if failed else 0)
            print(output if failed else f"## shard {index}/{shards}: {output.strip().splitlines()[-1:]}", flush=True)
    return status


_SDPA_CHOICES = {0: "math", 1: "flash", 2: "efficient", 3: "cudnn", 4: "overrideable"}


def sdpa_backend_report(device: str) -> list[str]:
    """Per production shape, the kernel stock SDPA runs on this card (torch's own `_fused_sdp_choice`) and
    the one PLADIS's joint rule mirrors (`stock_sdpa_backend`); they must agree."""
    from attention.kernels.sdpa_backend import stock_sdpa_backend

    shapes = {  # (batch, heads, queries, keys, head dim, dtype, masked)
        "SDXL attn2 1024², fp16": (2, 10, 4096, 77, 64, torch.float16, False),
        "FLUX joint 1024², bf16": (1, 24, 4608, 4608, 128, torch.bfloat16, False),
        "SD3.5 joint 1024², fp16": (2, 24, 4429, 4429, 64, torch.float16, False),
        "Qwen-Image joint with text mask, bf16": (1, 24, 4352, 4352, 128, torch.bfloat16, True),
    }
    lines = []
    for name, (batch, heads, queries, keys, dim, dtype, masked) in shapes.items():
        query = torch.randn(batch, queries, heads, dim, device=device, dtype=dtype).transpose(1, 2)
        key, value = (torch.randn(batch, heads, keys, dim, device=device, dtype=dtype) for _ in range(2))
        mask = torch.zeros(batch, 1, 1, keys, device=device, dtype=dtype) if masked else None
        stock = _SDPA_CHOICES.get(torch._fused_sdp_choice(query, key, value, mask), "?")
        mirrored = stock_sdpa_backend(query, key, value, mask)
        agreement = "agrees" if stock == mirrored else "DISAGREES"
        lines.append(f"# stock SDPA, {name}: {stock} (PLADIS's dense op mirrors {mirrored}: {agreement})")
    return lines


def gpu_check_header(device: str) -> str:
    import triton

    major, minor = torch.cuda.get_device_capability(device)
    deprioritized = os.environ.get("TORCH_CUDNN_SDPA_DEPRIORITIZED", "unset")
    return (
        f"# GPU check {time.strftime('%Y-%m-%d')}: {_device_name(device)} (sm{major}{minor}), "
        f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
        f"Triton {triton.__version__}, TORCH_CUDNN_SDPA_DEPRIORITIZED={deprioritized}"
    )


def gpu_check(args) -> int:
    """The GPU check in one command: the card, torch versions and the SDPA kernel stock runs; device
    tests (both kernels and the bf16 production path against float64, tiny pipelines, offload) in
    parallel shards; then the timing tables with launch and sync counts. Returns an exit code."""
    tables = [gpu_check_table_argv(args, case, dtype) for case, dtype in GPU_CHECK_RUNS]
    if args.dry_run:
        print(f"# GPU check plan: PLADIS_TEST_DEVICE={args.device}, device tests in {args.shards} shards at once")
        for command in [] if args.skip_tests else gpu_check_commands(args.shards):
            print(" ".join(command[1:]))
        for argv in tables:
            print("-m scripts.dev.benchmark " + " ".join(argv))
        return 0
    print(gpu_check_header(args.device), *sdpa_backend_report(args.device), sep="\n", flush=True)
    status = 0 if args.skip_tests else run_device_tests(args.device, args.shards)
    for argv in tables:
        run_table(parse_args(argv), argv)
    return status


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    torch.manual_seed(0)
    if args.memory_of:
        runs = per_kernel(*CASES[args.cases](args), args.kernels)
        print(json.dumps({"extra_bytes": extra_peak_memory(runs, args.memory_of, args)}))
        return 0
    if args.gpu_check:
        return gpu_check(args)
    run_table(args, argv)
    return 0


def _without_cases(argv: list[str]) -> list[str]:
    """`argv` minus any `--cases X` / `--cases=X`, to pass the other options on to probes."""
    kept, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item == "--cases":
            skip = True
        elif not item.startswith("--cases="):
            kept.append(item)
    return kept


if __name__ == "__main__":
    sys.exit(main())
