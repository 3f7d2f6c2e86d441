"""SDXL with perturbed-attention guidance (PAG), without and with PLADIS (the reference README's PAG section).

PAG replaces self-attention by the identity in the chosen layers for an extra perturbed batch chunk;
PLADIS acts on cross-attention only, so the two combine. Tiny assets on CPU: `--tiny`.
"""

from __future__ import annotations

from pathlib import Path

from scripts.cli.recipes import SDXL_BASE, example_parser, parse_example_args, save_with_and_without


def main(argv: list[str] | None = None) -> Path:
    parser = example_parser(
        __doc__,
        pipeline="sdxl-seg",
        model=SDXL_BASE,
        steps=25,
        guidance_scale=1.0,
        pladis_scale=2.0,
        guidance={"pag_scale": 3.0, "pag_applied_layers": ["mid"]},
    )
    args = parse_example_args(parser, argv, name="sdxl_pag")
    from scripts.cli.loading import load_pipeline  # imports torch: only once the options parsed

    return save_with_and_without(load_pipeline(args), args, f"PAG {args.pag_scale:g}")


if __name__ == "__main__":
    main()
