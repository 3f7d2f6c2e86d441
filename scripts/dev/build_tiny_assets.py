"""Build the tiny random-weight pipelines in `asset/` (real diffusers classes, offline, deterministic).

Run `python -m scripts.dev.build_tiny_assets` to regenerate them; tests and `--tiny` examples load the
saved folders with `from_pretrained`, exactly as users load real checkpoints.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    AutoencoderDC,
    AutoencoderKL,
    ControlNetModel,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    PixArtSigmaPipeline,
    PixArtTransformer2DModel,
    SanaPipeline,
    SanaTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLControlNetPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig, get_peft_model_state_dict
from PIL import Image, ImageDraw
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    DPTConfig,
    DPTForDepthEstimation,
    DPTImageProcessor,
    Gemma2Config,
    Gemma2Model,
    GemmaTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

from scripts.cli.assets import (
    ASSET_DIR,
    TINY_CONTROL_IMAGE,
    TINY_DPT,
    TINY_FLUX_DEV,
    TINY_FLUX_LORA,
    TINY_FLUX_SCHNELL,
    TINY_SDXL,
    TINY_SDXL_CONTROLNET,
    TINY_SDXL_LORA,
)
from scripts.cli.parsers import command_parser

# Tiny prompt words get their own tokens, so prompts that differ in a word give different embeddings.
_WORDS = [
    "a",
    "an",
    "photo",
    "of",
    "cat",
    "dog",
    "red",
    "blue",
    "green",
    "cube",
    "ball",
    "on",
    "the",
    "table",
    "astronaut",
    "riding",
    "horse",
    "in",
    "space",
    "mountains",
    "lake",
    "with",
    "and",
    "two",
    "three",
]
CLIP_MAX_LENGTH = 77
T5_MAX_LENGTH = 512


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
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=CLIP_MAX_LENGTH,
        projection_dim=projection_dim,
        hidden_act="gelu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def tiny_sdxl_unet(cross_attention_dim: int = 64, text_embeds_dim: int = 32) -> UNet2DConditionModel:
    """An SDXL-topology UNet (3 down blocks, 2 layers each, attention in the lower two), tiny widths."""
    return UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(8, 16, 32),
        norm_num_groups=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 2),
        attention_head_dim=(2, 4, 8),
        use_linear_projection=True,
        cross_attention_dim=cross_attention_dim,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + text_embeds_dim,
    )


def tiny_vae() -> AutoencoderKL:
    """A 2-level VAE (×2 downsampling): 64×64 images ↔ 32×32 latents."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(32, 64),
        sample_size=64,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
    )


def build_tiny_sdxl(seed: int = 0) -> StableDiffusionXLPipeline:
    """A random-weight `StableDiffusionXLPipeline` whose UNet module names match real SDXL's."""
    torch.manual_seed(seed)
    tokenizer = tiny_clip_tokenizer()
    text_encoder = CLIPTextModel(_clip_config(tokenizer, hidden_size=32, projection_dim=32))
    text_encoder_2 = CLIPTextModelWithProjection(_clip_config(tokenizer, hidden_size=32, projection_dim=32))
    unet = tiny_sdxl_unet(cross_attention_dim=32 + 32, text_embeds_dim=32)
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
        num_train_timesteps=1000,
    )
    pipe = StableDiffusionXLPipeline(
        vae=tiny_vae(),
        text_encoder=text_encoder.eval(),
        text_encoder_2=text_encoder_2.eval(),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet.eval(),
        scheduler=scheduler,
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


def tiny_t5_tokenizer() -> T5Tokenizer:
    """A unigram T5 tokenizer with a small in-memory vocabulary (whole words + single characters)."""
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [(f"▁{word}", -1.0) for word in _WORDS]
    vocab += [(char, -5.0) for char in "abcdefghijklmnopqrstuvwxyz0123456789.,!?'-"]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=T5_MAX_LENGTH)


def tiny_t5_encoder(tokenizer: T5Tokenizer) -> T5EncoderModel:
    """A 2-layer T5 encoder of width 32 (no dropout) for `tokenizer`, like FLUX's, SD3's and PixArt's text encoder."""
    return T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer),
            d_model=32,
            d_kv=8,
            d_ff=37,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            dropout_rate=0.0,
            feed_forward_proj="gated-gelu",
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=0,
        )
    ).eval()


def tiny_flux_transformer(guidance_embeds: bool) -> FluxTransformer2DModel:
    """A FLUX transformer with 2 double-stream + 2 single-stream blocks, 2 heads × 16, 16 latent channels."""
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=4 * 16,
        num_layers=2,
        num_single_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=guidance_embeds,
        axes_dims_rope=(4, 4, 8),
    )


def tiny_flux_vae() -> AutoencoderKL:
    """A 2-level VAE with FLUX's 16 latent channels, scaling/shift and no quant convs: 64×64 ↔ 32×32."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=16,
        block_out_channels=(32, 64),
        sample_size=64,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        use_quant_conv=False,
        use_post_quant_conv=False,
        scaling_factor=0.3611,
        shift_factor=0.1159,
    )


def build_tiny_flux(guidance_embeds: bool, seed: int = 0) -> FluxPipeline:
    """A random-weight `FluxPipeline`: schnell-like (`guidance_embeds=False`, no time shift) or dev-like
    (guidance embedding, resolution-dependent time shift), with CLIP + a 2-layer T5 text encoder."""
    torch.manual_seed(seed)
    tokenizer = tiny_clip_tokenizer()
    text_encoder = CLIPTextModel(_clip_config(tokenizer, hidden_size=32, projection_dim=32))
    tokenizer_2 = tiny_t5_tokenizer()
    text_encoder_2 = tiny_t5_encoder(tokenizer_2)
    transformer = tiny_flux_transformer(guidance_embeds)
    if guidance_embeds:
        scheduler = FlowMatchEulerDiscreteScheduler(
            shift=3.0,
            use_dynamic_shifting=True,
            base_shift=0.5,
            max_shift=1.15,
            base_image_seq_len=256,
            max_image_seq_len=4096,
        )
    else:
        scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
    return FluxPipeline(
        scheduler=scheduler,
        vae=tiny_flux_vae().eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2.eval(),
        tokenizer_2=tokenizer_2,
        transformer=transformer.eval(),
    )


def save_tiny_flux_lora(folder: Path, seed: int = 1) -> Path:
    """Write a rank-4 LoRA for the tiny FLUX transformers (diffusers/peft key format, non-zero weights)
    and return the `.safetensors` file."""
    torch.manual_seed(seed)
    transformer = tiny_flux_transformer(guidance_embeds=False)
    config = LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    transformer.add_adapter(config)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(transformer))
    FluxPipeline.save_lora_weights(folder, transformer_lora_layers=layers, safe_serialization=True)
    return folder / "pytorch_lora_weights.safetensors"


def build_tiny_sdxl_controlnet(seed: int = 0) -> ControlNetModel:
    """A ControlNet made from the tiny SDXL UNet (`ControlNetModel.from_unet`), with its zero-initialised
    output convolutions filled with small random weights so that the control image really acts."""
    unet = build_tiny_sdxl().unet
    torch.manual_seed(seed)
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32))
    for zero_conv in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:
        torch.nn.init.normal_(zero_conv.weight, std=0.2)
    return controlnet.eval()


def build_tiny_sdxl_controlnet_pipeline(seed: int = 0) -> StableDiffusionXLControlNetPipeline:
    """The tiny SDXL with `build_tiny_sdxl_controlnet()`, as one pipeline folder (its `controlnet/`
    subfolder also loads alone with `ControlNetModel.from_pretrained`)."""
    components = build_tiny_sdxl(seed).components
    return StableDiffusionXLControlNetPipeline(
        **components, controlnet=build_tiny_sdxl_controlnet(seed), add_watermarker=False
    )


def build_tiny_dpt(seed: int = 0) -> tuple[DPTForDepthEstimation, DPTImageProcessor]:
    """A random-weight ViT DPT depth estimator (4 layers of width 32, 32×32 input) and its image processor."""
    torch.manual_seed(seed)
    config = DPTConfig(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=37,
        image_size=32,
        patch_size=8,
        backbone_out_indices=[0, 1, 2, 3],
        neck_hidden_sizes=[16, 16, 32, 32],
        fusion_hidden_size=16,
        reassemble_factors=[4, 2, 1, 0.5],
        is_hybrid=False,
    )
    processor = DPTImageProcessor(size={"height": 32, "width": 32}, keep_aspect_ratio=False, ensure_multiple_of=8)
    return DPTForDepthEstimation(config).eval(), processor


def tiny_control_image(size: int = 64) -> Image.Image:
    """A deterministic RGB test picture (a sky-to-ground gradient with a disc and a box) for ControlNet examples."""
    image = Image.new("RGB", (size, size))
    draw = ImageDraw.Draw(image)
    for row in range(size):
        shade = 255 * row // max(1, size - 1)
        draw.line([(0, row), (size - 1, row)], fill=(shade // 2, 120, 255 - shade))
    draw.ellipse([size // 8, size // 8, size // 2, size // 2], fill=(230, 60, 40))
    draw.rectangle([size // 2, size // 2, size - size // 8, size - size // 16], fill=(40, 200, 90))
    return image


# Other model families, built in memory by the compatibility tests (not saved to asset/).
def build_tiny_sd(version: str = "1.5", seed: int = 0) -> StableDiffusionPipeline:
    """A random-weight `StableDiffusionPipeline`: SD 1.5-like (ε-prediction, conv projections) or 2.x-like
    (v-prediction, linear projections, per-block head dims); one CLIP encoder, DDIM, the tiny VAE."""
    if version not in ("1.5", "2"):
        raise ValueError(f"version must be '1.5' or '2', got {version!r}")
    torch.manual_seed(seed)
    tokenizer = tiny_clip_tokenizer()
    text_encoder = CLIPTextModel(_clip_config(tokenizer, hidden_size=32, projection_dim=32))
    unet = UNet2DConditionModel(
        sample_size=32,
        layers_per_block=1,
        block_out_channels=(16, 32),
        norm_num_groups=8,
        cross_attention_dim=32,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=(2, 4) if version == "2" else 4,
        use_linear_projection=version == "2",
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        steps_offset=1,
        set_alpha_to_one=False,
        prediction_type="v_prediction" if version == "2" else "epsilon",
    )
    return StableDiffusionPipeline(
        vae=tiny_vae().eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        unet=unet.eval(),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_tiny_sd3(dual_attention: bool = True, seed: int = 0) -> StableDiffusion3Pipeline:
    """A random-weight `StableDiffusion3Pipeline` with 2 joint blocks (the last `context_pre_only`), two CLIP
    encoders and a T5; `dual_attention=True` is SD3.5-like (q/k RMS norms, a self-attention `attn2` in block 0)."""
    torch.manual_seed(seed)
    tokenizer, tokenizer_3 = tiny_clip_tokenizer(), tiny_t5_tokenizer()
    text_encoder = CLIPTextModelWithProjection(_clip_config(tokenizer, hidden_size=32, projection_dim=32))
    text_encoder_2 = CLIPTextModelWithProjection(_clip_config(tokenizer, hidden_size=32, projection_dim=32))
    transformer = SD3Transformer2DModel(
        sample_size=32,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        caption_projection_dim=16,
        joint_attention_dim=32,
        pooled_projection_dim=64,
        dual_attention_layers=(0,) if dual_attention else (),
        qk_norm="rms_norm" if dual_attention else None,
    )
    return StableDiffusion3Pipeline(
        transformer=transformer.eval(),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=tiny_flux_vae().eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2.eval(),
        tokenizer_2=tokenizer,
        text_encoder_3=tiny_t5_encoder(tokenizer_3),
        tokenizer_3=tokenizer_3,
    )


def build_tiny_pixart_sigma(seed: int = 0) -> PixArtSigmaPipeline:
    """A random-weight `PixArtSigmaPipeline`: 2 blocks with softmax cross-attention under a text padding mask."""
    torch.manual_seed(seed)
    tokenizer = tiny_t5_tokenizer()
    text_encoder = tiny_t5_encoder(tokenizer)
    transformer = PixArtTransformer2DModel(
        sample_size=32,
        num_layers=2,
        patch_size=2,
        attention_head_dim=8,
        num_attention_heads=2,
        caption_channels=32,
        in_channels=4,
        out_channels=8,
        cross_attention_dim=16,
        attention_bias=True,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
    )
    return PixArtSigmaPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=tiny_vae().eval(),
        transformer=transformer.eval(),
        scheduler=DPMSolverMultistepScheduler(),
    )


def tiny_gemma_tokenizer() -> GemmaTokenizer:
    """A Gemma BPE tokenizer with a small in-memory vocabulary: letters, and "▁word" merged into one token."""
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    vocab = {token: index for index, token in enumerate([*specials, *"abcdefghijklmnopqrstuvwxyz▁"])}
    merges = []
    for word in _WORDS:  # Gemma marks spaces as "▁"; merge "▁" + word left to right into one token
        pieces = list("▁" + word)
        while len(pieces) > 1:
            merges.append((pieces[0], pieces[1]))
            pieces = [pieces[0] + pieces[1]] + pieces[2:]
            vocab.setdefault(pieces[0], len(vocab))
    return GemmaTokenizer(vocab=vocab, merges=list(dict.fromkeys(merges)), model_max_length=T5_MAX_LENGTH)


def build_tiny_sana(seed: int = 0) -> SanaPipeline:
    """A random-weight `SanaPipeline`: linear self-attention, masked softmax cross-attention, a 1-layer Gemma2
    text encoder and a 2-level DC-AE (×2: 64×64 images ↔ 32×32 latents)."""
    torch.manual_seed(seed)
    tokenizer = tiny_gemma_tokenizer()
    text_config = Gemma2Config(
        head_dim=16,
        hidden_size=8,
        intermediate_size=64,
        num_attention_heads=2,
        num_hidden_layers=1,
        num_key_value_heads=2,
        vocab_size=len(tokenizer),
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    transformer = SanaTransformer2DModel(
        patch_size=1,
        in_channels=4,
        out_channels=4,
        num_layers=2,
        num_attention_heads=2,
        attention_head_dim=4,
        num_cross_attention_heads=2,
        cross_attention_head_dim=4,
        cross_attention_dim=8,
        caption_channels=8,
        sample_size=32,
    )
    vae = AutoencoderDC(
        in_channels=3,
        latent_channels=4,
        attention_head_dim=2,
        encoder_block_types=("ResBlock", "EfficientViTBlock"),
        decoder_block_types=("ResBlock", "EfficientViTBlock"),
        encoder_block_out_channels=(8, 8),
        decoder_block_out_channels=(8, 8),
        encoder_qkv_multiscales=((), (5,)),
        decoder_qkv_multiscales=((), (5,)),
        encoder_layers_per_block=(1, 1),
        decoder_layers_per_block=(1, 1),
        downsample_block_type="conv",
        upsample_block_type="interpolate",
        decoder_norm_types="rms_norm",
        decoder_act_fns="silu",
        scaling_factor=0.41407,
    )
    return SanaPipeline(
        tokenizer=tokenizer,
        text_encoder=Gemma2Model(text_config).eval(),
        vae=vae.eval(),
        transformer=transformer.eval(),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
    )


def main(argv: list[str] | None = None) -> None:
    """Write every tiny asset into `--out` (default `asset/`)."""
    parser = command_parser(__doc__)
    parser.add_argument("--out", type=Path, default=ASSET_DIR, help="folder to write the pipelines into")
    args = parser.parse_args(argv)
    build_tiny_sdxl().save_pretrained(args.out / TINY_SDXL.name, safe_serialization=True)
    print(f"wrote {args.out / TINY_SDXL.name}")
    print(f"wrote {save_tiny_sdxl_lora(args.out / TINY_SDXL_LORA.parent.name)}")
    build_tiny_sdxl_controlnet_pipeline().save_pretrained(args.out / TINY_SDXL_CONTROLNET.name, safe_serialization=True)
    depth_model, depth_processor = build_tiny_dpt()
    depth_model.save_pretrained(args.out / TINY_DPT.name)
    depth_processor.save_pretrained(args.out / TINY_DPT.name)
    tiny_control_image().save(args.out / TINY_CONTROL_IMAGE.name)
    written = (TINY_SDXL_CONTROLNET, TINY_DPT, TINY_CONTROL_IMAGE)
    print("wrote " + ", ".join(str(args.out / path.name) for path in written))
    for folder, guidance_embeds in ((TINY_FLUX_SCHNELL, False), (TINY_FLUX_DEV, True)):
        build_tiny_flux(guidance_embeds).save_pretrained(args.out / folder.name, safe_serialization=True)
        print(f"wrote {args.out / folder.name}")
    print(f"wrote {save_tiny_flux_lora(args.out / TINY_FLUX_LORA.parent.name)}")


if __name__ == "__main__":
    main()
