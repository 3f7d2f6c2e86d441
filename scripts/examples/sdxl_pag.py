"""SDXL with perturbed-attention guidance (PAG), without and with PLADIS (the reference README's PAG section).

PAG replaces self-attention by the identity in the chosen layers for an extra perturbed batch chunk;
PLADIS acts on cross-attention only, so the two combine. Tiny assets on CPU: `--tiny`.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a file from anywhere

from pipeline.pipeline_sdxl_seg import PLADISStableDiffusionXLPipeline  # noqa: E402  (the SEG/PAG pipeline)
from scripts.examples.common import SDXL_BASE, example_parser, parse_example_args, save_with_and_without  # noqa: E402


def main(argv: list[str] | None = None) -> Path:
    parser = example_parser(__doc__, model=SDXL_BASE, steps=25, guidance_scale=1.0, pladis_scale=2.0)
    parser.add_argument("--pag-scale", type=float, default=3.0, help="PAG scale (default 3)")
    parser.add_argument("--pag-layers", nargs="+", default=["mid"], help="PAG layers (default: mid)")
    args = parse_example_args(parser, argv, name="sdxl_pag")
    pipe = PLADISStableDiffusionXLPipeline.from_pretrained(args.model, dtype=args.dtype, use_safetensors=True).to(args.device)
    return save_with_and_without(pipe, args, f"PAG {args.pag_scale:g}", guidance_scale=args.guidance_scale,
                                 pag_scale=args.pag_scale, pag_applied_layers=args.pag_layers)


if __name__ == "__main__":
    main()
