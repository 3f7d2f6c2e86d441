"""SDXL depth ControlNet with SEG (no CFG), without and with PLADIS (the reference README's ControlNet section).

The depth map comes from DPT (`scripts/cli/preprocess.py`); the call is the reference's
`guidance_scale=1.0, seg_scale=3.0, seg_blur_sigma=1e10` (infinite blur: `SEG_INFINITE_BLUR` here),
`seg_applied_layers=['mid'], pladis_scale=3.0`. `--pladis-controlnet` puts PLADIS on the ControlNet's
cross-attention too. Tiny assets on CPU: `--tiny`.
"""

from __future__ import annotations

from pathlib import Path

from attention.perturbation.seg_sigma import SEG_INFINITE_BLUR
from scripts.cli.assets import TINY_CONTROL_IMAGE, TINY_DPT, TINY_SDXL_CONTROLNET, model_source
from scripts.cli.preprocess import DEFAULT_DEPTH_MODEL, depth_map
from scripts.cli.recipes import SDXL_BASE, example_parser, parse_example_args, save_with_and_without

STORMTROOPER = "https://huggingface.co/lllyasviel/sd-controlnet-depth/resolve/main/images/stormtrooper.png"
SEG = {"seg_scale": 3.0, "seg_blur_sigma": SEG_INFINITE_BLUR, "seg_applied_layers": ["mid"], "pladis_controlnet": False}


def main(argv: list[str] | None = None) -> Path:
    parser = example_parser(
        __doc__, pipeline="controlnet", model=SDXL_BASE, steps=25, guidance_scale=1.0, pladis_scale=3.0, guidance=SEG
    )
    parser.set_defaults(prompt="stormtrooper lecture, photorealistic")
    parser.add_argument("--controlnet", default="diffusers/controlnet-depth-sdxl-1.0", help="depth ControlNet")
    parser.add_argument("--depth-model", default=DEFAULT_DEPTH_MODEL, help="DPT depth estimator (hub id or folder)")
    parser.add_argument("--image", default=STORMTROOPER, help="picture whose depth steers the image (file or URL)")
    parser.add_argument("--controlnet-scale", type=float, default=0.5, help="controlnet_conditioning_scale")
    args = parse_example_args(
        parser,
        argv,
        name="controlnet_depth",
        tiny={
            "model": TINY_SDXL_CONTROLNET,
            "controlnet": TINY_SDXL_CONTROLNET / "controlnet",
            "depth_model": TINY_DPT,
            "image": TINY_CONTROL_IMAGE,
        },
    )
    from diffusers.utils import load_image  # diffusers and torch: only once the options parsed

    from scripts.cli.loading import load_pipeline

    pipe = load_pipeline(args)
    size = (args.width or 1024, args.height or 1024)
    depth = depth_map(load_image(str(args.image)), model=model_source(args.depth_model), device=args.device, size=size)
    return save_with_and_without(pipe, args, "ControlNet depth + SEG", image=depth)


if __name__ == "__main__":
    main()
