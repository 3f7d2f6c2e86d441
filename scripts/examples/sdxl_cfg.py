"""SDXL with classifier-free guidance, without and with PLADIS (the reference README's SDXL section).

Real model: `python scripts/examples/sdxl_cfg.py --device cuda`; tiny assets on CPU: `--tiny`.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a file from anywhere

from pipeline.pipeline_sdxl import PLADISStableDiffusionXLPipeline  # noqa: E402
from scripts.examples.common import SDXL_BASE, example_parser, parse_example_args, save_with_and_without  # noqa: E402


def main(argv: list[str] | None = None) -> Path:
    parser = example_parser(__doc__, model=SDXL_BASE, steps=25, guidance_scale=5.0, pladis_scale=2.0)
    args = parse_example_args(parser, argv, name="sdxl_cfg")
    pipe = PLADISStableDiffusionXLPipeline.from_pretrained(args.model, dtype=args.dtype, use_safetensors=True).to(args.device)
    return save_with_and_without(pipe, args, f"CFG {args.guidance_scale:g}", guidance_scale=args.guidance_scale)


if __name__ == "__main__":
    main()
