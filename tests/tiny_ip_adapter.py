"""Tiny random IP-Adapters built offline, in the files diffusers' `load_ip_adapter` reads.

`write_ip_adapter(denoiser, folder)` writes `folder/ip-adapter.safetensors` (the image projection and one
`to_k_ip`/`to_v_ip` pair per layer that takes the image prompt, in the original IP-Adapter key layout, shaped from
the U-Net or FLUX-style transformer) and a tiny CLIP image encoder in `folder/image_encoder`; `load_tiny_ip_adapter`
loads them into a pipeline with its own `load_ip_adapter`, as a user loads a downloaded adapter.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

WEIGHTS = "ip-adapter.safetensors"
IMAGE_EMBED_DIM = 24  # the tiny image encoder's projection width
IMAGE_TOKENS = 4  # image-prompt tokens of a plain IP-Adapter (`ImageProjection`)


def _random(generator: torch.Generator, rows: int, columns: int) -> torch.Tensor:
    return torch.randn(rows, columns, generator=generator) / columns**0.5


def _adapter_layers(denoiser: torch.nn.Module) -> list[torch.nn.Module]:
    """The attention modules that take the image prompt, in diffusers' loading order: a U-Net's cross-attention
    layers (keys 1, 3, 5, …, as the original checkpoints number them), a FLUX transformer's double-stream blocks."""
    names = [name[: -len(".processor")] for name in denoiser.attn_processors]
    if isinstance(denoiser, UNet2DConditionModel):
        return [layer for layer in map(denoiser.get_submodule, names) if layer.is_cross_attention]
    return [denoiser.get_submodule(name) for name in names if not name.startswith("single_transformer_blocks")]


def ip_adapter_state_dict(denoiser: torch.nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights of a plain IP-Adapter for `denoiser`, flat, as `ip-adapter.safetensors` holds them."""
    generator = torch.Generator().manual_seed(seed)
    unet = isinstance(denoiser, UNet2DConditionModel)
    text_dim = denoiser.config.cross_attention_dim if unet else denoiser.config.joint_attention_dim
    weights = {
        "image_proj.proj.weight": _random(generator, IMAGE_TOKENS * text_dim, IMAGE_EMBED_DIM),
        "image_proj.proj.bias": torch.randn(IMAGE_TOKENS * text_dim, generator=generator) * 0.1,
        "image_proj.norm.weight": torch.ones(text_dim),
        "image_proj.norm.bias": torch.zeros(text_dim),
    }
    for index, layer in enumerate(_adapter_layers(denoiser)):
        key, inner = (2 * index + 1 if unet else index), layer.to_q.out_features
        for projection in ("to_k_ip", "to_v_ip"):
            weights[f"ip_adapter.{key}.{projection}.weight"] = _random(generator, inner, text_dim)
            if not unet:  # FLUX's adapter projections have biases
                weights[f"ip_adapter.{key}.{projection}.bias"] = torch.randn(inner, generator=generator) * 0.1
    return weights


def write_ip_adapter(denoiser: torch.nn.Module, folder: Path, seed: int = 0) -> Path:
    """`folder` with `ip-adapter.safetensors` for `denoiser` and a tiny CLIP image encoder in `image_encoder/`."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file(ip_adapter_state_dict(denoiser, seed), folder / WEIGHTS)
    torch.manual_seed(seed)
    config = CLIPVisionConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        projection_dim=IMAGE_EMBED_DIM,
    )
    CLIPVisionModelWithProjection(config).eval().save_pretrained(folder / "image_encoder")
    return folder


def load_tiny_ip_adapter(pipe, folder: Path, seed: int = 0) -> None:
    """Write a tiny IP-Adapter for `pipe`'s denoiser to `folder` and load it with `pipe.load_ip_adapter`."""
    denoiser = pipe.unet if getattr(pipe, "unet", None) is not None else pipe.transformer
    write_ip_adapter(denoiser, folder, seed)
    if getattr(pipe, "unet", None) is not None:
        pipe.load_ip_adapter(str(folder), subfolder="", weight_name=WEIGHTS, local_files_only=True)
    else:
        pipe.load_ip_adapter(
            str(folder),
            weight_name=WEIGHTS,
            image_encoder_pretrained_model_name_or_path=str(folder / "image_encoder"),
            image_encoder_dtype=torch.float32,
            local_files_only=True,
        )
