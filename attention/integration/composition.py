"""How PLADIS meets diffusers' other per-step machinery: layer-skip guiders and step caches.

diffusers' PAG and skip-layer guiders (`hooks/layer_skip.py`) perturb their layers in one extra pass by
replacing every `F.scaled_dot_product_attention` call inside them with the identity (the values) through a
`TorchFunctionMode`. Where such a layer also runs PLADIS (the joint attention of Qwen-Image, CogView4,
HunyuanImage, Z-Image), PLADIS steps aside in that pass: the layer's stock attention call runs under the
guider's mode, so the perturbed pass is exactly the guider's identity attention and the other passes exactly
PLADIS. The PLADIS processor classes are registered with the guiders' processor registry under their stock
processor's entry, so those guiders find them.

diffusers' step caches (FirstBlockCache, TaylorSeer, MagCache, FasterCache, Pyramid Attention Broadcast,
SeaCache) reuse or extrapolate what earlier steps computed; a PLADIS step window would switch PLADIS on or off
inside such a run, and the steps the cache skips would carry the other side's residuals, so a window on a
cached denoiser is refused (a constant λ works: every computed step runs PLADIS).
"""

from __future__ import annotations

import torch
from diffusers.hooks._helpers import AttentionProcessorRegistry
from diffusers.hooks.layer_skip import AttentionScoreSkipFunctionMode

# diffusers' modules whose hooks carry results from one denoising step to the next, and the caches they make.
STEP_CACHES = {
    "diffusers.hooks.first_block_cache": "FirstBlockCache",
    "diffusers.hooks.taylorseer_cache": "TaylorSeerCache",
    "diffusers.hooks.mag_cache": "MagCache",
    "diffusers.hooks.faster_cache": "FasterCache",
    "diffusers.hooks.pyramid_attention_broadcast": "PyramidAttentionBroadcast",
    "diffusers.hooks.sea_cache": "SeaCache",
}


def perturbed_by_layer_skip() -> bool:
    """Whether the attention call happening now is inside a layer a PAG / skip-layer guider perturbs (its
    identity-attention `TorchFunctionMode` is active). Host state only."""
    if torch._C._len_torch_function_stack() == 0:
        return False
    return any(
        isinstance(mode, AttentionScoreSkipFunctionMode) for mode in torch.overrides._get_current_function_mode_stack()
    )


def register_for_layer_skip(pladis_class: type, stock_type: type) -> None:
    """Let diffusers' layer-skip hooks find `pladis_class` under the entry of `stock_type` (how the stock
    processor's attention is skipped), where diffusers registers one."""
    try:
        metadata = AttentionProcessorRegistry.get(stock_type)
    except ValueError:
        return  # diffusers' layer-skip guiders do not support this processor, with or without PLADIS
    AttentionProcessorRegistry.register(pladis_class, metadata)


def step_caches(model: torch.nn.Module) -> list[str]:
    """The diffusers step caches hooked on `model` or its submodules, by name (e.g. "FirstBlockCache")."""
    found = []
    for module in model.modules():
        registry = getattr(module, "_diffusers_hook", None)
        for hook in getattr(registry, "hooks", {}).values():
            cache = STEP_CACHES.get(type(hook).__module__)
            if cache is not None and cache not in found:
                found.append(cache)
    return found


def check_window_without_step_cache(models: list[torch.nn.Module]) -> None:
    """Refuse a PLADIS step window on a denoiser with a step cache, naming the cache."""
    for model in models:
        if caches := step_caches(model):
            raise ValueError(
                f"pladis_start/pladis_stop with a step cache on {type(model).__name__} ({', '.join(caches)}): the "
                "steps the cache skips reuse residuals of steps computed on the other side of the window, so PLADIS "
                "would switch on or off at steps the cache decides. Keep the window at 0..1 (a constant λ works "
                "with the cache) or disable the cache (model.disable_cache())"
            )
