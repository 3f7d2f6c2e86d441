"""What PLADIS costs in one joint-attention layer under diffusers' context parallelism, and how much of it is the
text gather (every rank needs every text key and value, since entmax normalises over all of a row's text keys).

    torchrun --nproc-per-node 2 -m scripts.dev.context_parallel_cost                  # CPU: gloo; GPUs: NCCL
    torchrun --nproc-per-node 8 -m scripts.dev.context_parallel_cost --mode ring --dtype bfloat16

Each process holds a random shard `[text ; image]` of one FLUX-like layer (default: FLUX.1 at 1024², 24 heads × 128,
512 text + 4096 image tokens, batch 1) and times, median of `--repeats`: diffusers' own context-parallel attention
(the `native` backend, Ulysses only: its ring needs a backend that returns the log-sum-exp), the PLADIS call
(`attention.integration.context_parallel`), and the text gather alone. Process 0 prints a Markdown table row.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.distributed as dist
from diffusers import ContextParallelConfig, ParallelConfig
from diffusers.models.attention_dispatch import dispatch_attention_fn
from torch.distributed.device_mesh import init_device_mesh

from attention.integration.call_context import LayerCall
from attention.integration.context_parallel import context_parallel_attention, gather_text
from attention.integration.text_layout import LEADING
from attention.settings import PLADISSettings
from scripts.cli.loading import DTYPES
from scripts.cli.parsers import command_parser


def _timed(call: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Median wall time of `call` in milliseconds over `repeats` runs after one warm-up, ranks in step."""
    times = []
    for index in range(repeats + 1):
        dist.barrier()
        start = time.perf_counter()
        call()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if index:
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def measure(
    mode: str, heads: int, head_dim: int, text: int, image: int, dtype: torch.dtype, repeats: int, device: torch.device
) -> dict[str, float]:
    """This rank's timings (ms) and the bytes the text gather brings it, on one process group already joined."""
    ranks, rank = dist.get_world_size(), dist.get_rank()
    if text % ranks or image % ranks or (mode == "ulysses" and heads % ranks):
        raise ValueError(f"{text} text, {image} image tokens and {heads} heads must split over {ranks} processes")
    context = ContextParallelConfig(**{f"{mode}_degree": ranks})
    config = ParallelConfig(context_parallel_config=context)
    mesh = init_device_mesh(device.type, context.mesh_shape, mesh_dim_names=context.mesh_dim_names)
    config.setup(rank, ranks, device, mesh=mesh)
    generator = torch.Generator(device).manual_seed(rank)
    shard = (1, (text + image) // ranks, heads, head_dim)  # (B, N, H, D), this rank's [text ; image]
    query, key, value = (torch.randn(shard, generator=generator, device=device, dtype=dtype) for _ in range(3))
    layer = LayerCall(PLADISSettings(2.0), LEADING, text // ranks, family="FLUX.1-like")
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))
    timings = {
        "pladis_ms": _timed(lambda: context_parallel_attention(layer, q, k, v, None, None, config), repeats, device),
        "gather_ms": _timed(
            lambda: gather_text(k[..., : text // ranks, :], v[..., : text // ranks, :], None, context),
            repeats,
            device,
        ),
        "gather_mb": (ranks - 1) / ranks * text * heads * 2 * head_dim * query.element_size() / 2**20,
    }
    if mode == "ulysses":
        timings["stock_ms"] = _timed(
            lambda: dispatch_attention_fn(query, key, value, parallel_config=config), repeats, device
        )
    return timings


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = command_parser(__doc__)
    parser.add_argument("--mode", choices=("ulysses", "ring"), default="ulysses")
    parser.add_argument("--heads", type=int, default=24)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--text", type=int, default=512, help="text tokens (default 512)")
    parser.add_argument("--image", type=int, default=4096, help="image tokens (default 4096: 1024² in FLUX)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default bfloat16 on GPUs, else float32")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    started = not dist.is_initialized()
    if started:
        if "WORLD_SIZE" not in os.environ:
            parser.error("run it under torchrun (torchrun --nproc-per-node 2 -m scripts.dev.context_parallel_cost)")
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    try:
        device = torch.device("cpu")
        if dist.get_backend() == "nccl":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", dist.get_rank())))
            torch.cuda.set_device(device)
        dtype = DTYPES[args.dtype or ("bfloat16" if device.type == "cuda" else "float32")]
        with torch.no_grad():
            timings = measure(args.mode, args.heads, args.head_dim, args.text, args.image, dtype, args.repeats, device)
        if dist.get_rank() == 0:
            stock = f"{timings['stock_ms']:.1f}" if "stock_ms" in timings else "–"
            print("| device | ranks | mode | dtype | stock attention ms | PLADIS ms | text gather ms | gather MB |")
            print(
                f"| {device.type} ({dist.get_backend()}) | {dist.get_world_size()} | {args.mode} | "
                f"{str(dtype).removeprefix('torch.')} | {stock} | {timings['pladis_ms']:.1f} | "
                f"{timings['gather_ms']:.2f} | {timings['gather_mb']:.2f} |"
            )
        return timings
    finally:
        if started:
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
