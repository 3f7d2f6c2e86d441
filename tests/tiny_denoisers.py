"""Tiny random-weight denoisers of the newer families (the real diffusers 0.42 classes, built offline), their
call inputs (a batch of two, the second with padded text where the model takes a text mask), and where
their PLADIS layers sit, for `materialised_pladis` (see `tests/materialised_reference.py`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import torch
from diffusers import (
    ChromaTransformer2DModel,
    CogView4Transformer2DModel,
    Flux2Transformer2DModel,
    HunyuanImageTransformer2DModel,
    HunyuanVideoTransformer3DModel,
    LTXVideoTransformer3DModel,
    QwenImageTransformer2DModel,
    SanaVideoTransformer3DModel,
    WanTransformer3DModel,
    ZImageTransformer2DModel,
)
from diffusers.models.transformers import (
    transformer_chroma,
    transformer_cogview4,
    transformer_flux,
    transformer_flux2,
    transformer_hunyuan_video,
    transformer_hunyuanimage,
    transformer_ltx,
    transformer_qwenimage,
    transformer_sana_video,
    transformer_wan,
    transformer_z_image,
)

TEXT = 7  # text tokens (the second sample's last 3 are padding where the model takes a mask)
PADDING = 3
WAN_TEXT = 512  # Wan's image-to-video cross-attention splits off the last 512 keys as the text


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _text_mask(batch: int = 2, tokens: int = TEXT) -> torch.Tensor:
    mask = torch.ones(batch, tokens, dtype=torch.bool)
    mask[1, tokens - PADDING :] = False
    return mask


def _flux_ids(side: int, axes: int) -> tuple[torch.Tensor, torch.Tensor]:
    axis = torch.arange(side, dtype=torch.float32)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)
    image = torch.cat([torch.zeros(side * side, axes - 2), grid], dim=1)
    return image, torch.zeros(TEXT, axes)


@dataclass(frozen=True)
class TinyDenoiser:
    """A family's tiny denoiser: `build()`, `inputs(seed)`, the diffusers module whose `dispatch_attention_fn`
    its processors call, the PLADIS layers' reference layouts (default and with single blocks), and the
    tensor a call returns."""

    build: Callable[[], torch.nn.Module]
    inputs: Callable[[int], dict]
    module: ModuleType
    layouts: Callable[[torch.nn.Module, dict, bool], dict[str, tuple]]
    has_text_mask: bool
    has_single_blocks: bool = False
    output: Callable[[object], torch.Tensor] = lambda result: result.sample


def _seeded(build: Callable[[], torch.nn.Module]) -> Callable[[], torch.nn.Module]:
    def seeded() -> torch.nn.Module:
        torch.manual_seed(0)
        model = build().eval()
        with torch.no_grad():  # random weights everywhere: diffusers zero-initialises some output layers
            for parameter in model.parameters():
                parameter.add_(torch.randn_like(parameter) * 0.1)
        return model

    return seeded


def _flux_layouts(double: str, single: str) -> Callable:
    def layouts(model, inputs, single_blocks):
        return {
            name: ("leading", TEXT)
            for name, module in model.named_modules()
            if hasattr(module, "processor") and (name.startswith(double) or single_blocks and name.startswith(single))
        }

    return layouts


def _flux2_inputs(seed: int) -> dict:
    generator = _generator(seed)
    image_ids, text_ids = _flux_ids(4, 4)
    return {
        "hidden_states": torch.randn(2, 16, 16, generator=generator),
        "encoder_hidden_states": torch.randn(2, TEXT, 32, generator=generator),
        "timestep": torch.tensor([0.5, 0.5]),
        "img_ids": image_ids,
        "txt_ids": text_ids,
    }


def _chroma_inputs(seed: int) -> dict:
    generator = _generator(seed)
    image_ids, text_ids = _flux_ids(4, 3)
    mask = torch.cat([_text_mask(), torch.ones(2, 16, dtype=torch.bool)], dim=1)  # as ChromaPipeline extends it
    return {
        "hidden_states": torch.randn(2, 16, 16, generator=generator),
        "encoder_hidden_states": torch.randn(2, TEXT, 32, generator=generator),
        "timestep": torch.tensor([0.5, 0.5]),
        "img_ids": image_ids,
        "txt_ids": text_ids,
        "attention_mask": mask,
    }


def _qwen_inputs(seed: int) -> dict:
    generator = _generator(seed)
    return {
        "hidden_states": torch.randn(2, 16, 16, generator=generator),
        "encoder_hidden_states": torch.randn(2, TEXT, 32, generator=generator),
        "encoder_hidden_states_mask": _text_mask(),
        "timestep": torch.tensor([0.5, 0.5]),
        "img_shapes": [[(1, 4, 4)]] * 2,
    }


def _wan_inputs(image_to_video: bool) -> Callable[[int], dict]:
    def inputs(seed: int) -> dict:
        generator = _generator(seed)
        text = WAN_TEXT if image_to_video else TEXT
        extra = {"encoder_hidden_states_image": torch.randn(2, 5, 16, generator=generator)} if image_to_video else {}
        return {
            "hidden_states": torch.randn(2, 4, 1, 8, 8, generator=generator),
            "timestep": torch.tensor([500, 500]),
            "encoder_hidden_states": torch.randn(2, text, 16, generator=generator),
            **extra,
        }

    return inputs


def _cross_layouts(text: int) -> Callable:
    def layouts(model, inputs, single_blocks):
        return {
            name: ("cross", text)
            for name, module in model.named_modules()
            if hasattr(module, "processor") and name.endswith(".attn2")
        }

    return layouts


def _ltx_inputs(seed: int) -> dict:
    generator = _generator(seed)
    return {
        "hidden_states": torch.randn(2, 16, 8, generator=generator),
        "encoder_hidden_states": torch.randn(2, TEXT, 16, generator=generator),
        "timestep": torch.tensor([500, 500]),
        "encoder_attention_mask": _text_mask().long(),
        "num_frames": 1,
        "height": 4,
        "width": 4,
    }


def _hunyuan_video_inputs(seed: int) -> dict:
    generator = _generator(seed)
    return {
        "hidden_states": torch.randn(2, 4, 1, 4, 4, generator=generator),
        "timestep": torch.tensor([500, 500]),
        "encoder_hidden_states": torch.randn(2, TEXT, 16, generator=generator),
        "encoder_attention_mask": _text_mask().long(),
        "pooled_projections": torch.randn(2, 8, generator=generator),
        "guidance": torch.tensor([3500.0, 3500.0]),
    }


def _hunyuan_video_layouts(model, inputs, single_blocks):
    return {
        name: ("trailing", TEXT)
        for name, module in model.named_modules()
        if hasattr(module, "processor")
        and (name.startswith("transformer_blocks.") or single_blocks and name.startswith("single_transformer_blocks."))
    }


def _hunyuan_image_inputs(seed: int) -> dict:
    generator = _generator(seed)
    return {
        "hidden_states": torch.randn(2, 4, 4, 4, generator=generator),
        "timestep": torch.tensor([500.0, 500.0]),
        "encoder_hidden_states": torch.randn(2, TEXT, 16, generator=generator),
        "encoder_attention_mask": _text_mask().long(),
    }


def _sana_video_inputs(seed: int) -> dict:
    generator = _generator(seed)
    return {
        "hidden_states": torch.randn(2, 4, 1, 8, 8, generator=generator),
        "encoder_hidden_states": torch.randn(2, TEXT, 16, generator=generator),
        "timestep": torch.tensor([500, 500]),
        "encoder_attention_mask": _text_mask().long(),
    }


def _cogview4_inputs(seed: int) -> dict:
    generator = _generator(seed)
    sizes = torch.tensor([[32.0, 32.0]] * 2)
    return {
        "hidden_states": torch.randn(2, 4, 8, 8, generator=generator),
        "encoder_hidden_states": torch.randn(2, TEXT, 8, generator=generator),
        "timestep": torch.tensor([500, 500]),
        "original_size": sizes,
        "target_size": sizes,
        "crop_coords": torch.zeros(2, 2),
    }


Z_IMAGE_CAPTIONS = (20, 40)  # caption tokens per sample: packed to 32 and 64, so the batch is padded


def _z_image_inputs(seed: int) -> dict:
    generator = _generator(seed)
    return {
        "x": [torch.randn(4, 1, 8, 8, generator=generator) for _ in Z_IMAGE_CAPTIONS],
        "t": torch.tensor([0.5, 0.5]),
        "cap_feats": [torch.randn(length, 16, generator=generator) for length in Z_IMAGE_CAPTIONS],
    }


def _z_image_layouts(model, inputs, single_blocks):
    segments = tuple((32, -(-length // 32) * 32) for length in Z_IMAGE_CAPTIONS)  # 16 image tokens pack to 32
    return {
        name: ("packed", segments)
        for name, module in model.named_modules()
        if hasattr(module, "processor") and name.startswith("layers.")
    }


DENOISERS: dict[str, TinyDenoiser] = {
    "flux2": TinyDenoiser(
        _seeded(
            lambda: Flux2Transformer2DModel(
                patch_size=1,
                in_channels=16,
                num_layers=2,
                num_single_layers=2,
                attention_head_dim=16,
                num_attention_heads=2,
                joint_attention_dim=32,
                timestep_guidance_channels=32,
                axes_dims_rope=(4, 4, 4, 4),
                guidance_embeds=False,
            )
        ),
        _flux2_inputs,
        transformer_flux2,
        _flux_layouts("transformer_blocks.", "single_transformer_blocks."),
        has_text_mask=False,
        has_single_blocks=True,
    ),
    "chroma": TinyDenoiser(
        _seeded(
            lambda: ChromaTransformer2DModel(
                patch_size=1,
                in_channels=16,
                num_layers=2,
                num_single_layers=2,
                attention_head_dim=16,
                num_attention_heads=2,
                joint_attention_dim=32,
                axes_dims_rope=(4, 4, 8),
                approximator_num_channels=8,
                approximator_hidden_dim=32,
                approximator_layers=1,
            )
        ),
        _chroma_inputs,
        transformer_flux,
        _flux_layouts("transformer_blocks.", "single_transformer_blocks."),
        has_text_mask=True,
        has_single_blocks=True,
    ),
    "qwen-image": TinyDenoiser(
        _seeded(
            lambda: QwenImageTransformer2DModel(
                patch_size=2,
                in_channels=16,
                out_channels=4,
                num_layers=2,
                attention_head_dim=16,
                num_attention_heads=2,
                joint_attention_dim=32,
                axes_dims_rope=(4, 6, 6),
            )
        ),
        _qwen_inputs,
        transformer_qwenimage,
        lambda model, inputs, single: {
            f"transformer_blocks.{i}.attn": ("leading", TEXT) for i in range(len(model.transformer_blocks))
        },
        has_text_mask=True,
    ),
    "wan": TinyDenoiser(
        _seeded(
            lambda: WanTransformer3DModel(
                patch_size=(1, 2, 2),
                num_attention_heads=2,
                attention_head_dim=8,
                in_channels=4,
                out_channels=4,
                text_dim=16,
                freq_dim=16,
                ffn_dim=32,
                num_layers=2,
                rope_max_seq_len=32,
            )
        ),
        _wan_inputs(False),
        transformer_wan,
        _cross_layouts(TEXT),
        has_text_mask=False,
    ),
    "wan-i2v": TinyDenoiser(
        _seeded(
            lambda: WanTransformer3DModel(
                patch_size=(1, 2, 2),
                num_attention_heads=2,
                attention_head_dim=8,
                in_channels=4,
                out_channels=4,
                text_dim=16,
                freq_dim=16,
                ffn_dim=32,
                num_layers=2,
                rope_max_seq_len=32,
                image_dim=16,
                added_kv_proj_dim=16,
            )
        ),
        _wan_inputs(True),
        transformer_wan,
        _cross_layouts(WAN_TEXT),
        has_text_mask=False,
    ),
    "ltx-video": TinyDenoiser(
        _seeded(
            lambda: LTXVideoTransformer3DModel(
                in_channels=8,
                out_channels=8,
                num_attention_heads=2,
                attention_head_dim=8,
                cross_attention_dim=16,
                num_layers=2,
                caption_channels=16,
            )
        ),
        _ltx_inputs,
        transformer_ltx,
        _cross_layouts(TEXT),
        has_text_mask=True,
    ),
    "hunyuan-video": TinyDenoiser(
        _seeded(
            lambda: HunyuanVideoTransformer3DModel(
                in_channels=4,
                out_channels=4,
                num_attention_heads=2,
                attention_head_dim=10,
                num_layers=2,
                num_single_layers=2,
                num_refiner_layers=1,
                patch_size=1,
                patch_size_t=1,
                text_embed_dim=16,
                pooled_projection_dim=8,
                rope_axes_dim=(2, 4, 4),
            )
        ),
        _hunyuan_video_inputs,
        transformer_hunyuan_video,
        _hunyuan_video_layouts,
        has_text_mask=True,
        has_single_blocks=True,
    ),
    "hunyuan-image": TinyDenoiser(
        _seeded(
            lambda: HunyuanImageTransformer2DModel(
                in_channels=4,
                out_channels=4,
                num_attention_heads=2,
                attention_head_dim=8,
                num_layers=2,
                num_single_layers=2,
                num_refiner_layers=1,
                patch_size=(1, 1),
                text_embed_dim=16,
                rope_axes_dim=(4, 4),
            )
        ),
        _hunyuan_image_inputs,
        transformer_hunyuanimage,
        _hunyuan_video_layouts,
        has_text_mask=True,
        has_single_blocks=True,
    ),
    "sana-video": TinyDenoiser(
        _seeded(
            lambda: SanaVideoTransformer3DModel(
                in_channels=4,
                out_channels=4,
                num_attention_heads=2,
                attention_head_dim=8,
                num_layers=2,
                num_cross_attention_heads=2,
                cross_attention_head_dim=8,
                cross_attention_dim=16,
                caption_channels=16,
                sample_size=8,
                rope_max_seq_len=32,
            )
        ),
        _sana_video_inputs,
        transformer_sana_video,
        _cross_layouts(TEXT),
        has_text_mask=True,
    ),
    "cogview4": TinyDenoiser(  # its pipeline passes no text mask (and the processor's would not mask: 0/1 added)
        _seeded(
            lambda: CogView4Transformer2DModel(
                patch_size=2,
                in_channels=4,
                out_channels=4,
                num_layers=2,
                attention_head_dim=8,
                num_attention_heads=2,
                text_embed_dim=8,
                time_embed_dim=8,
                condition_dim=4,
                rope_axes_dim=(4, 4),
            )
        ),
        _cogview4_inputs,
        transformer_cogview4,
        lambda model, inputs, single: {
            f"transformer_blocks.{i}.attn1": ("leading", TEXT) for i in range(len(model.transformer_blocks))
        },
        has_text_mask=False,
    ),
    "z-image": TinyDenoiser(
        _seeded(
            lambda: ZImageTransformer2DModel(
                all_patch_size=(2,),
                all_f_patch_size=(1,),
                in_channels=4,
                dim=32,
                n_layers=2,
                n_refiner_layers=1,
                n_heads=2,
                n_kv_heads=2,
                cap_feat_dim=16,
                axes_dims=[4, 6, 6],
                axes_lens=[256, 32, 32],
            )
        ),
        _z_image_inputs,
        transformer_z_image,
        _z_image_layouts,
        has_text_mask=True,
        output=lambda result: torch.stack(result.sample),
    ),
}
_ = transformer_chroma  # Chroma's blocks use FLUX's processor, whose attention function lives in transformer_flux
