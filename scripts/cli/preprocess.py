"""Control images for the ControlNet pipeline: depth maps from transformers' DPT, edges from controlnet_aux.

`PREPROCESSORS` maps a name (`"canny"`, `"depth"`) to a function `image -> control image` (PIL, same
size as the input); the compare script and the ControlNet examples pick one by name.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from functools import lru_cache

import numpy as np
from PIL import Image

DEFAULT_DEPTH_MODEL = "Intel/dpt-hybrid-midas"


@lru_cache(maxsize=2)
def load_depth_estimator(model: str = DEFAULT_DEPTH_MODEL, device: str = "cpu"):
    """`(DPTForDepthEstimation, DPTImageProcessor)` from a hub id or a local folder, loaded once per (model, device)."""
    from transformers import DPTForDepthEstimation, DPTImageProcessor

    estimator = DPTForDepthEstimation.from_pretrained(model, use_safetensors=True).to(device).eval()
    return estimator, DPTImageProcessor.from_pretrained(model)


def depth_map(
    image: Image.Image, model: str = DEFAULT_DEPTH_MODEL, device: str = "cpu", size: tuple[int, int] | None = None
) -> Image.Image:
    """The relative depth of `image` as a 3-channel 8-bit picture (near = bright), like diffusers' ControlNet
    depth examples: DPT's prediction resized (bicubic) to `size` (width, height; default the input's) and
    min-max normalised."""
    import torch  # here, so the scripts can name DEFAULT_DEPTH_MODEL in their options without loading torch

    estimator, processor = load_depth_estimator(model, str(device))
    width, height = size or image.size
    pixel_values = processor(images=image.convert("RGB"), return_tensors="pt").pixel_values.to(device)
    with torch.no_grad():
        depth = estimator(pixel_values=pixel_values.to(estimator.dtype)).predicted_depth.float()
    depth = torch.nn.functional.interpolate(
        depth.unsqueeze(1), size=(height, width), mode="bicubic", align_corners=False
    )
    low, high = depth.amin(), depth.amax()
    depth = (depth - low) / (high - low).clamp_min(torch.finfo(depth.dtype).tiny)  # a flat map stays black
    gray = (depth[0, 0].clamp(0, 1) * 255.0).round().to(torch.uint8).cpu().numpy()
    return Image.fromarray(np.stack([gray] * 3, axis=-1))


def canny_map(image: Image.Image, low_threshold: int = 100, high_threshold: int = 200) -> Image.Image:
    """Canny edges of `image` (white on black, 3 channels, same size) by controlnet_aux's `CannyDetector`."""
    with warnings.catch_warnings():  # the package imports all its detectors, noisily and slowly: only on use
        warnings.simplefilter("ignore")
        from controlnet_aux.canny import CannyDetector

    resolution = max(64, min(image.size))  # the detector snaps sizes to multiples of 64
    edges = CannyDetector()(
        image.convert("RGB"),
        low_threshold,
        high_threshold,
        detect_resolution=resolution,
        image_resolution=resolution,
        output_type="pil",
    )
    return edges if edges.size == image.size else edges.resize(image.size, Image.NEAREST)


PREPROCESSORS: dict[str, Callable[..., Image.Image]] = {"canny": canny_map, "depth": depth_map}
