"""FLUX.1-dev on the GPUs of one machine with diffusers' parallelism, without and with PLADIS.

    torchrun --nproc-per-node 4 -m scripts.examples.flux_dev_many_gpus                   # Ulysses over 4 GPUs
    torchrun --nproc-per-node 2 -m scripts.examples.flux_dev_many_gpus --parallel ring
    torchrun --nproc-per-node 2 -m scripts.examples.flux_dev_many_gpus --parallel tensor # the weights split too

Every process loads the pipeline on its own GPU, and `transformer.enable_parallelism` splits each attention's
token sequence across them (Ulysses: heads exchanged all-to-all; ring: key/value blocks passed round) or, with
`--parallel tensor`, the transformer's weights. PLADIS gives the one-GPU image (to float rounding) in every
mode; process 0 writes the grid. Run as plain `python -m ...` (or with one process) it uses one device.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from scripts.cli.assets import TINY_FLUX_DEV
from scripts.cli.recipes import example_parser, images_with_and_without, parse_example_args, save_pair

PARALLEL = ("ulysses", "ring", "tensor")
MAX_SEQUENCE_LENGTH = 512  # FLUX.1-dev's text tokens
FLUX_PIXELS_PER_TOKEN = 16  # 8× VAE, then 2×2 patches

if TYPE_CHECKING:
    from diffusers import ContextParallelConfig, TensorParallelConfig


def parallel_config(kind: str, processes: int) -> ContextParallelConfig | TensorParallelConfig:
    """The config `enable_parallelism` takes for `--parallel kind` over `processes` GPUs."""
    from diffusers import ContextParallelConfig, TensorParallelConfig

    if kind == "tensor":
        return TensorParallelConfig(tp_degree=processes)
    return ContextParallelConfig(**{f"{kind}_degree": processes})


def sequence_problem(height: int, width: int, processes: int, kind: str) -> str | None:
    """Why the token sequence cannot be split evenly over `processes` (diffusers needs equal shards), or None."""
    if kind == "tensor":
        return None
    tokens = (height // FLUX_PIXELS_PER_TOKEN) * (width // FLUX_PIXELS_PER_TOKEN)
    for name, count in (("image", tokens), ("text", MAX_SEQUENCE_LENGTH)):
        if count % processes:
            return f"--parallel {kind}: the {count} {name} tokens do not split evenly over {processes} processes"
    return None


def join_processes(device: str) -> tuple[int, int, str, bool]:
    """(rank, processes, this process's device, whether this call started the process group): under `torchrun`
    it joins the group (NCCL on GPUs, gloo on CPU); one already started (a test) is used as it is."""
    import torch
    import torch.distributed as dist

    started = False
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("nccl" if str(device).startswith("cuda") else "gloo")
        started = True
    if not dist.is_initialized():
        return 0, 1, device, started
    if str(device) == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    return dist.get_rank(), dist.get_world_size(), device, started


def main(argv: list[str] | None = None) -> Path | None:
    parser = example_parser(
        __doc__,
        pipeline="flux",
        model="black-forest-labs/FLUX.1-dev",
        steps=28,
        guidance_scale=3.5,
        pladis_scale=2.0,
        dtype="bfloat16",
    )
    parser.add_argument(
        "--parallel",
        choices=PARALLEL,
        default="ulysses",
        help="split the sequence (ulysses: heads all-to-all; ring: key/value blocks) or the weights (tensor)",
    )
    args = parse_example_args(parser, argv, name="flux_dev_many_gpus", tiny={"model": TINY_FLUX_DEV}, flux=True)
    import torch.distributed as dist  # torch and diffusers: only once the options parsed

    from scripts.cli.loading import load_pipeline

    rank, processes, device, started = join_processes(args.device)
    try:
        height, width = args.height or 1024, args.width or 1024
        if processes > 1 and (problem := sequence_problem(height, width, processes, args.parallel)):
            parser.error(problem)
        pipe = load_pipeline(args, device)
        heads = pipe.transformer.config.num_attention_heads
        if processes > 1 and args.parallel != "ring" and heads % processes:
            parser.error(f"--parallel {args.parallel}: the {heads} attention heads do not split over {processes}")
        if processes > 1 and args.parallel == "ring" and str(device).startswith("cuda"):
            # diffusers' ring pass needs each block's log-sum-exp, which its default `native` backend cannot give
            pipe.transformer.set_attention_backend("_native_cudnn")
        if processes > 1:
            pipe.transformer.enable_parallelism(config=parallel_config(args.parallel, processes))
        images = images_with_and_without(
            pipe, args, height=height, width=width, max_sequence_length=MAX_SEQUENCE_LENGTH
        )
        method = f"FLUX.1-dev, {processes} x {args.parallel}" if processes > 1 else "FLUX.1-dev"
        return save_pair(images, args, method) if rank == 0 else None
    finally:
        if started:
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
