"""FLUX.1-schnell (4 steps, no guidance), without and with PLADIS (the reference README's FLUX schnell section).

PLADIS acts on the image-query × text-key block of FLUX's joint attention. Weights in bfloat16 on a
GPU; tiny assets on CPU: `--tiny`.
"""

from __future__ import annotations

from pathlib import Path

from scripts.cli.assets import TINY_FLUX_SCHNELL
from scripts.cli.recipes import example_parser, parse_example_args, save_with_and_without


def main(argv: list[str] | None = None) -> Path:
    parser = example_parser(
        __doc__,
        pipeline="flux",
        model="black-forest-labs/FLUX.1-schnell",
        steps=4,
        guidance_scale=0.0,
        pladis_scale=2.0,
        dtype="bfloat16",
    )
    args = parse_example_args(parser, argv, name="flux_schnell", tiny={"model": TINY_FLUX_SCHNELL}, flux=True)
    from scripts.cli.loading import load_pipeline  # imports torch: only once the options parsed

    return save_with_and_without(load_pipeline(args), args, "FLUX.1-schnell", max_sequence_length=256)


if __name__ == "__main__":
    main()
