"""SDXL with smoothed energy guidance (SEG), without and with PLADIS (the reference README's SEG section).

SEG blurs the self-attention query of an extra perturbed batch chunk (σ > 9999: its mean); PLADIS acts
on cross-attention only, so the two combine. Tiny assets on CPU: `--tiny`.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a file from anywhere

from pipeline.pipeline_sdxl_seg import PLADISStableDiffusionXLPipeline  # noqa: E402  (the SEG/PAG pipeline)
from scripts.examples.common import SDXL_BASE, example_parser, parse_example_args, save_with_and_without  # noqa: E402


def main(argv: list[str] | None = None) -> Path:
    parser = example_parser(__doc__, model=SDXL_BASE, steps=25, guidance_scale=1.0, pladis_scale=2.0)
    parser.add_argument("--seg-scale", type=float, default=3.0, help="SEG scale (default 3)")
    parser.add_argument("--seg-blur-sigma", type=float, default=100.0,
                        help="query blur σ (default 100; > 9999 = infinite)")
    parser.add_argument("--seg-layers", nargs="+", default=["mid"], help="SEG layers (default: mid)")
    args = parse_example_args(parser, argv, name="sdxl_seg")
    pipe = PLADISStableDiffusionXLPipeline.from_pretrained(args.model, dtype=args.dtype, use_safetensors=True).to(args.device)
    return save_with_and_without(pipe, args, f"SEG {args.seg_scale:g} (sigma {args.seg_blur_sigma:g})",
                                 guidance_scale=args.guidance_scale, seg_scale=args.seg_scale,
                                 seg_blur_sigma=args.seg_blur_sigma, seg_applied_layers=args.seg_layers)


if __name__ == "__main__":
    main()
