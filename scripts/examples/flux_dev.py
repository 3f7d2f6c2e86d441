"""FLUX.1-dev (guidance-distilled, guidance 3.5), without and with PLADIS (the reference README's FLUX dev section).

PLADIS acts on the image-query × text-key block of FLUX's joint attention. Weights in bfloat16 on a
GPU; tiny assets on CPU: `--tiny`.
"""

from __future__ import annotations

from pathlib import Path

from scripts.cli.assets import TINY_FLUX_DEV
from scripts.cli.recipes import example_parser, parse_example_args, save_with_and_without


def main(argv: list[str] | None = None) -> Path:
    parser = example_parser(
        __doc__,
        pipeline="flux",
        model="black-forest-labs/FLUX.1-dev",
        steps=28,
        guidance_scale=3.5,
        pladis_scale=2.0,
        dtype="bfloat16",
    )
    args = parse_example_args(parser, argv, name="flux_dev", tiny={"model": TINY_FLUX_DEV}, flux=True)
    from scripts.cli.loading import load_pipeline  # imports torch: only once the options parsed

    return save_with_and_without(
        load_pipeline(args), args, f"FLUX.1-dev (guidance {args.guidance_scale:g})", max_sequence_length=512
    )


if __name__ == "__main__":
    main()
