"""SDXL with classifier-free guidance, without and with PLADIS (the reference README's SDXL section).

Real model: `python -m scripts.examples.sdxl_cfg --device cuda`; tiny assets on CPU: `--tiny`.
"""

from __future__ import annotations

from pathlib import Path

from scripts.cli.recipes import SDXL_BASE, example_parser, parse_example_args, save_with_and_without


def main(argv: list[str] | None = None) -> Path:
    parser = example_parser(__doc__, model=SDXL_BASE, steps=25, guidance_scale=5.0, pladis_scale=2.0)
    args = parse_example_args(parser, argv, name="sdxl_cfg")
    from scripts.cli.loading import load_pipeline  # imports torch: only once the options parsed

    return save_with_and_without(load_pipeline(args), args, f"CFG {args.guidance_scale:g}")


if __name__ == "__main__":
    main()
