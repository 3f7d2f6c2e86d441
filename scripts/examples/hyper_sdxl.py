"""Hyper-SDXL (4-step LoRA, DDIM "trailing", no CFG), without and with PLADIS (the reference README's
Hyper-SDXL section).

`--lora` takes a local `Hyper-SDXL-4steps-lora.safetensors` (or fetches it from ByteDance/Hyper-SD);
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
        lora="ByteDance/Hyper-SD/Hyper-SDXL-4steps-lora.safetensors",
        scheduler="ddim-trailing",
    )
    args = parse_example_args(parser, argv, name="hyper_sdxl")
    from scripts.cli.loading import load_pipeline  # imports torch: only once the options parsed

    return save_with_and_without(load_pipeline(args), args, "Hyper-SDXL")


if __name__ == "__main__":
    main()
