"""SDXL-Lightning (4-step LoRA, Euler "trailing", no CFG), without and with PLADIS (the reference README's
SDXL-Lightning section).

`--lora` takes a local `sdxl_lightning_4step_lora.safetensors` (or fetches it from ByteDance/SDXL-Lightning);
tiny assets on CPU: `--tiny`.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a file from anywhere

from diffusers import EulerDiscreteScheduler  # noqa: E402

from pipeline.pipeline_sdxl import PLADISStableDiffusionXLPipeline  # noqa: E402
from scripts.common import fuse_lora_file  # noqa: E402
from scripts.examples.common import (  # noqa: E402
    SDXL_BASE, example_parser, lora_file, parse_example_args, save_with_and_without,
)


def main(argv: list[str] | None = None) -> Path:
    parser = example_parser(__doc__, model=SDXL_BASE, steps=4, guidance_scale=0.0, pladis_scale=2.0,
                            lora="ByteDance/SDXL-Lightning/sdxl_lightning_4step_lora.safetensors")
    args = parse_example_args(parser, argv, name="sdxl_lightning")
    pipe = PLADISStableDiffusionXLPipeline.from_pretrained(args.model, dtype=args.dtype, use_safetensors=True).to(args.device)
    fuse_lora_file(pipe, lora_file(args.lora))
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
    return save_with_and_without(pipe, args, "SDXL-Lightning", guidance_scale=args.guidance_scale)


if __name__ == "__main__":
    main()
