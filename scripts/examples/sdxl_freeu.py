"""SDXL with FreeU and CFG, without and with PLADIS (the reference README's FreeU section).

FreeU rescales the U-Net's backbone and skip features and leaves attention alone, so PLADIS adds to
it unchanged. Tiny assets on CPU: `--tiny`.
"""

from __future__ import annotations

from pathlib import Path

from scripts.cli.recipes import SDXL_BASE, example_parser, parse_example_args, save_with_and_without

SDXL_FREEU = (0.9, 0.2, 1.3, 1.4)  # FreeU's recommended SDXL factors s1, s2, b1, b2


def main(argv: list[str] | None = None) -> Path:
    parser = example_parser(__doc__, model=SDXL_BASE, steps=25, guidance_scale=5.0, pladis_scale=2.0, freeu=SDXL_FREEU)
    args = parse_example_args(parser, argv, name="sdxl_freeu")
    from scripts.cli.loading import load_pipeline  # imports torch: only once the options parsed

    return save_with_and_without(load_pipeline(args), args, "FreeU + CFG")


if __name__ == "__main__":
    main()
