"""FLUX.1-dev (guidance-distilled, guidance 3.5), without and with PLADIS (the reference README's FLUX dev section).

PLADIS acts on the image-query × text-key block of FLUX's joint attention. Weights in bfloat16 on a
GPU; tiny assets on CPU: `--tiny`.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a file from anywhere

from pipeline.pipeline_flux_pladis import PLADISFluxPipeline  # noqa: E402
from scripts.build_tiny_assets import TINY_FLUX_DEV  # noqa: E402
from scripts.examples.common import example_parser, parse_example_args, save_with_and_without  # noqa: E402


def main(argv: list[str] | None = None) -> Path:
    parser = example_parser(__doc__, model="black-forest-labs/FLUX.1-dev", steps=28, guidance_scale=3.5,
                            pladis_scale=2.0, dtype="bfloat16")
    args = parse_example_args(parser, argv, name="flux_dev", tiny={"model": TINY_FLUX_DEV}, flux=True)
    pipe = PLADISFluxPipeline.from_pretrained(args.model, dtype=args.dtype, use_safetensors=True).to(args.device)
    return save_with_and_without(pipe, args, f"FLUX.1-dev (guidance {args.guidance_scale:g})",
                                 guidance_scale=args.guidance_scale, max_sequence_length=512)


if __name__ == "__main__":
    main()
