"""SDXL-Lightning (4-step LoRA, Euler "trailing", no CFG), without and with PLADIS (the reference README's
SDXL-Lightning section).

`--lora` takes a local `sdxl_lightning_4step_lora.safetensors` (or fetches it from ByteDance/SDXL-Lightning);
tiny assets on CPU: `--tiny`.
"""

from __future__ import annotations

from pathlib import Path

from scripts.cli.recipes import SDXL_BASE, example_parser, parse_example_args, save_with_and_without


def main(argv: list[str] | None = None) -> Path:
    parser = example_parser(
        __doc__,
        model=SDXL_BASE,
        steps=4,
        guidance_scale=0.0,
        pladis_scale=2.0,
        lora="ByteDance/SDXL-Lightning/sdxl_lightning_4step_lora.safetensors",
        scheduler="euler-trailing",
    )
    args = parse_example_args(parser, argv, name="sdxl_lightning")
    from scripts.cli.loading import load_pipeline  # imports torch: only once the options parsed

    return save_with_and_without(load_pipeline(args), args, "SDXL-Lightning")


if __name__ == "__main__":
    main()
