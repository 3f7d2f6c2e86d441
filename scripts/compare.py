"""Generate one prompt from the same latents without and with PLADIS, and write a labelled grid.

With no arguments it runs on the embedded tiny SDXL pipeline (`asset/tiny-sdxl`) on CPU in
seconds; `--model` takes a hub id or a local folder of a real SDXL checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a file from anywhere

from attention import check_pladis_alpha, check_pladis_scale  # noqa: E402
from pipeline.pipeline_sdxl import PLADISStableDiffusionXLPipeline  # noqa: E402
from scripts.build_tiny_assets import TINY_SDXL  # noqa: E402
from scripts.grid import save_grid  # noqa: E402

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(TINY_SDXL), help="hub id or local folder (default: the tiny asset)")
    parser.add_argument("--prompt", default="a photo of an astronaut riding a horse on the moon")
    parser.add_argument("--negative-prompt", default=None)
    parser.add_argument("--pladis-scale", type=float, default=2.0, help="λ for the PLADIS image (default 2.0)")
    parser.add_argument("--pladis-alpha", type=float, default=1.5, help="α in (1, 2]: 1.5 entmax15, 2 sparsemax")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: 2 tiny, 25 real)")
    parser.add_argument("--guidance-scale", type=float, default=5.0)
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--out", type=Path, default=Path("outputs/compare.png"), help="grid PNG to write")
    args = parser.parse_args(argv)
    try:
        check_pladis_scale(args.pladis_scale)
        check_pladis_alpha(args.pladis_alpha)
    except (TypeError, ValueError) as error:
        parser.error(str(error))
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    return args


def initial_latents(pipe: PLADISStableDiffusionXLPipeline, height: int, width: int, seed: int) -> torch.Tensor:
    """The starting noise both images share, drawn on CPU so a seed gives the same noise on any device."""
    shape = (1, pipe.unet.config.in_channels, height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
    return torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    pipe = PLADISStableDiffusionXLPipeline.from_pretrained(args.model, dtype=DTYPES[args.dtype]).to(args.device)
    tiny = Path(args.model).resolve() == TINY_SDXL.resolve()
    steps = args.steps or (2 if tiny else 25)
    height = args.height or pipe.default_sample_size * pipe.vae_scale_factor
    width = args.width or pipe.default_sample_size * pipe.vae_scale_factor
    latents = initial_latents(pipe, height, width, args.seed)
    images, labels = [], []
    for scale in (0.0, args.pladis_scale):
        result = pipe(
            args.prompt, negative_prompt=args.negative_prompt, num_inference_steps=steps,
            guidance_scale=args.guidance_scale, height=height, width=width,
            latents=latents.to(args.device, pipe.unet.dtype),
            generator=torch.Generator("cpu").manual_seed(args.seed),
            pladis_scale=scale, pladis_alpha=args.pladis_alpha,
        )
        images.append(result.images[0])
        labels.append("without PLADIS" if scale == 0 else f"PLADIS scale={scale:g} alpha={args.pladis_alpha:g}")
    path = save_grid(images, labels, args.out)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
