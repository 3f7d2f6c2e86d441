"""DMD2 (4-step distilled SDXL LoRA, LCM scheduler, no CFG), without and with PLADIS (the reference
README's DMD2 section).

`--lora` takes a local `dmd2_sdxl_4step_lora_fp16.safetensors` (or fetches it from tianweiy/DMD2);
tiny assets on CPU: `--tiny`.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a file from anywhere

from diffusers import LCMScheduler  # noqa: E402

from pipeline.pipeline_sdxl import PLADISStableDiffusionXLPipeline  # noqa: E402
from scripts.common import fuse_lora_file  # noqa: E402
from scripts.examples.common import (  # noqa: E402
    SDXL_BASE, example_parser, lora_file, parse_example_args, save_with_and_without,
)

DMD2_TIMESTEPS = [999, 749, 499, 249]  # DMD2's 4-step schedule


def main(argv: list[str] | None = None) -> Path:
    parser = example_parser(__doc__, model=SDXL_BASE, steps=4, guidance_scale=0.0, pladis_scale=2.0,
                            lora="tianweiy/DMD2/dmd2_sdxl_4step_lora_fp16.safetensors")
    args = parse_example_args(parser, argv, name="sdxl_dmd2")
    pipe = PLADISStableDiffusionXLPipeline.from_pretrained(args.model, dtype=args.dtype, use_safetensors=True).to(args.device)
    fuse_lora_file(pipe, lora_file(args.lora))
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    four_steps = args.steps == len(DMD2_TIMESTEPS)
    schedule = {"timesteps": DMD2_TIMESTEPS} if four_steps else {"num_inference_steps": args.steps}
    return save_with_and_without(pipe, args, "DMD2", guidance_scale=args.guidance_scale, **schedule)


if __name__ == "__main__":
    main()
