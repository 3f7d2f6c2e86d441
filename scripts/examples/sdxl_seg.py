"""SDXL with smoothed energy guidance (SEG), without and with PLADIS (the reference README's SEG section).

SEG blurs the self-attention query of an extra perturbed batch chunk (σ > 9999: its mean); PLADIS acts
on cross-attention only, so the two combine. Tiny assets on CPU: `--tiny`.
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
        guidance={"seg_scale": 3.0, "seg_blur_sigma": 100.0, "seg_applied_layers": ["mid"]},
    )
    args = parse_example_args(parser, argv, name="sdxl_seg")
    from scripts.cli.loading import load_pipeline  # imports torch: only once the options parsed

    return save_with_and_without(load_pipeline(args), args, f"SEG {args.seg_scale:g} (sigma {args.seg_blur_sigma:g})")


if __name__ == "__main__":
    main()
