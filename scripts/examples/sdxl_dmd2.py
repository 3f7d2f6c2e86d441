"""DMD2 (4-step distilled SDXL LoRA, LCM scheduler, no CFG), without and with PLADIS (the reference
README's DMD2 section).

`--lora` takes a local `dmd2_sdxl_4step_lora_fp16.safetensors` (or fetches it from tianweiy/DMD2);
tiny assets on CPU: `--tiny`.
"""

from __future__ import annotations

from pathlib import Path

from scripts.cli.recipes import SDXL_BASE, example_parser, parse_example_args, save_with_and_without

DMD2_TIMESTEPS = [999, 749, 499, 249]  # DMD2's 4-step schedule


def main(argv: list[str] | None = None) -> Path:
    parser = example_parser(
        __doc__,
        model=SDXL_BASE,
        steps=4,
        guidance_scale=0.0,
        pladis_scale=2.0,
        lora="tianweiy/DMD2/dmd2_sdxl_4step_lora_fp16.safetensors",
        scheduler="lcm",
    )
    args = parse_example_args(parser, argv, name="sdxl_dmd2")
    from scripts.cli.loading import load_pipeline  # imports torch: only once the options parsed

    schedule = {"timesteps": DMD2_TIMESTEPS} if args.steps == len(DMD2_TIMESTEPS) else {}
    return save_with_and_without(load_pipeline(args), args, "DMD2", **schedule)


if __name__ == "__main__":
    main()
