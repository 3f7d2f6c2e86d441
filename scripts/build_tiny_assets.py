"""Build the tiny random-weight pipelines in `asset/` (real diffusers classes, offline, deterministic).

Run `python -m scripts.build_tiny_assets` to regenerate them; tests and `--tiny` examples load the
saved folders with `from_pretrained`, exactly as users load real checkpoints.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig, get_peft_model_state_dict
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

ASSET_DIR = Path(__file__).resolve().parent.parent / "asset"
TINY_SDXL = ASSET_DIR / "tiny-sdxl"
TINY_SDXL_LORA = ASSET_DIR / "tiny-sdxl-lora" / "pytorch_lora_weights.safetensors"
# Tiny prompt words get their own tokens, so prompts that differ in a word give different embeddings.
_WORDS = ["a", "an", "photo", "of", "cat", "dog", "red", "blue", "green", "cube", "ball", "on", "the", "table",
          "astronaut", "riding", "horse", "in", "space", "mountains", "lake", "with", "and", "two", "three"]
CLIP_MAX_LENGTH = 77


def _byte_symbols() -> list[str]:
    """The 256 printable symbols byte-level BPE uses for the bytes 0..255 (GPT-2's mapping)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def tiny_clip_tokenizer() -> CLIPTokenizer:
    """A byte-level CLIP tokenizer with a small in-memory vocabulary (bytes + a few whole words)."""
    symbols = _byte_symbols()
    vocab_list = symbols + [s + "</w>" for s in symbols] + [w + "</w>" for w in _WORDS]
    merges = []
    for word in _WORDS:  # merge each listed word left to right, so it becomes one token
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            merges.append((pieces[0], pieces[1]))
            merged = pieces[0] + pieces[1]
            if merged not in vocab_list:
                vocab_list.append(merged)
            pieces = [merged] + pieces[2:]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(vocab_list))}
    merges = list(dict.fromkeys(merges))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=CLIP_MAX_LENGTH)


def _clip_config(tokenizer: CLIPTokenizer, hidden_size: int, projection_dim: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=CLIP_MAX_LENGTH, projection_dim=projection_dim,
        hidden_act="gelu", bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def tiny_sdxl_unet(cross_attention_dim: int = 64, text_embeds_dim: int = 32) -> UNet2DConditionModel:
    """An SDXL-topology UNet (3 down blocks, 2 layers each, attention in the lower two), tiny widths."""
    return UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(8, 16, 32), norm_num_groups=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 2), attention_head_dim=(2, 4, 8),
        use_linear_projection=True, cross_attention_dim=cross_attention_dim,
        addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + text_embeds_dim,
    )


def tiny_vae() -> AutoencoderKL:
    """A 2-level VAE (×2 downsampling): 64×64 images ↔ 32×32 latents."""
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64), sample_size=64,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
    )


def build_tiny_sdxl(seed: int = 0) -> StableDiffusionXLPipeline:
    """A random-weight `StableDiffusionXLPipeline` whose UNet module names match real SDXL's."""
    torch.manual_seed(seed)
    tokenizer = tiny_clip_tokenizer()
    text_encoder = CLIPTextModel(_clip_config(tokenizer, hidden_size=32, projection_dim=32))
    text_encoder_2 = CLIPTextModelWithProjection(_clip_config(tokenizer, hidden_size=32, projection_dim=32))
    unet = tiny_sdxl_unet(cross_attention_dim=32 + 32, text_embeds_dim=32)
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
        timestep_spacing="leading", num_train_timesteps=1000,
    )
    pipe = StableDiffusionXLPipeline(
        vae=tiny_vae(), text_encoder=text_encoder.eval(), text_encoder_2=text_encoder_2.eval(),
        tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet.eval(), scheduler=scheduler,
        add_watermarker=False,
    )
    pipe.vae.eval()
    return pipe


def save_tiny_sdxl_lora(folder: Path, seed: int = 1) -> Path:
    """Write a rank-4 LoRA for the tiny SDXL UNet (diffusers/peft key format, non-zero weights) and
    return the `.safetensors` file, the kind of local file users pass to `load_lora_weights`."""
    torch.manual_seed(seed)
    unet = build_tiny_sdxl().unet
    config = LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    unet.add_adapter(config)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionXLPipeline.save_lora_weights(folder, unet_lora_layers=layers, safe_serialization=True)
    return folder / "pytorch_lora_weights.safetensors"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ASSET_DIR, help="folder to write the pipelines into")
    args = parser.parse_args()
    build_tiny_sdxl().save_pretrained(args.out / TINY_SDXL.name, safe_serialization=True)
    print(f"wrote {args.out / TINY_SDXL.name}")
    print(f"wrote {save_tiny_sdxl_lora(args.out / TINY_SDXL_LORA.parent.name)}")


if __name__ == "__main__":
    main()
