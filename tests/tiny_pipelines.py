"""Tiny random-weight pipelines of the newer families that build offline (Chroma, LTX-Video, Wan 2.x
text-to-video, FLUX.2 [klein]), from the project's tiny T5 tokenizer/encoder and FLUX VAE, a byte-level
Qwen tokenizer, and small configs of the real classes, for pipeline-level runs of `apply_pladis`."""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKLFlux2,
    AutoencoderKLLTXVideo,
    AutoencoderKLWan,
    ChromaPipeline,
    ChromaTransformer2DModel,
    FlowMatchEulerDiscreteScheduler,
    Flux2KleinPipeline,
    Flux2Transformer2DModel,
    LTXPipeline,
    LTXVideoTransformer3DModel,
    WanPipeline,
    WanTransformer3DModel,
)
from transformers import Qwen2Tokenizer, Qwen3Config, Qwen3ForCausalLM, UMT5Config, UMT5EncoderModel

from scripts.dev.build_tiny_assets import _byte_symbols, tiny_flux_vae, tiny_t5_encoder, tiny_t5_tokenizer


def build_tiny_chroma(seed: int = 0) -> ChromaPipeline:
    torch.manual_seed(seed)
    tokenizer = tiny_t5_tokenizer()
    transformer = ChromaTransformer2DModel(
        patch_size=1,
        in_channels=64,
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
    return ChromaPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=tiny_flux_vae().eval(),
        text_encoder=tiny_t5_encoder(tokenizer),
        tokenizer=tokenizer,
        transformer=transformer.eval(),
    )


def build_tiny_ltx(seed: int = 0) -> LTXPipeline:
    torch.manual_seed(seed)
    tokenizer = tiny_t5_tokenizer()
    vae = AutoencoderKLLTXVideo(
        latent_channels=8,
        block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, False, False),
        decoder_spatio_temporal_scaling=(True, True, False, False),
        decoder_inject_noise=(False,) * 5,
        upsample_residual=(False,) * 4,
        upsample_factor=(1,) * 4,
        patch_size=1,
        patch_size_t=1,
    )
    transformer = LTXVideoTransformer3DModel(
        in_channels=8,
        out_channels=8,
        num_attention_heads=2,
        attention_head_dim=8,
        cross_attention_dim=16,
        num_layers=2,
        caption_channels=32,
    )
    return LTXPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae.eval(),
        text_encoder=tiny_t5_encoder(tokenizer),
        tokenizer=tokenizer,
        transformer=transformer.eval(),
    )


def build_tiny_wan(seed: int = 0) -> WanPipeline:
    torch.manual_seed(seed)
    tokenizer = tiny_t5_tokenizer()
    text_encoder = UMT5EncoderModel(
        UMT5Config(
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
    )
    vae = AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=16,
        out_channels=16,
        text_dim=32,
        freq_dim=32,
        ffn_dim=32,
        num_layers=2,
        rope_max_seq_len=32,
    )
    return WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder.eval(),
        vae=vae.eval(),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        transformer=transformer.eval(),
    )


def build_tiny_flux2_klein(seed: int = 0) -> Flux2KleinPipeline:
    """FLUX.2 [klein]: a 2-layer Qwen3 text encoder (its three stacked hidden states give 48 channels), a byte-level
    Qwen tokenizer with a plain chat template, a 2-level FLUX.2 VAE and 1 + 1 transformer blocks."""
    torch.manual_seed(seed)
    vocab = {symbol: index for index, symbol in enumerate([*_byte_symbols(), "<|endoftext|>"])}
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[], model_max_length=512)
    tokenizer.chat_template = "{% for message in messages %}{{ message['content'] }}{% endfor %}"
    text_encoder = Qwen3ForCausalLM(
        Qwen3Config(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=8,
            max_position_embeddings=512,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    vae = AutoencoderKLFlux2(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=32,
    )
    transformer = Flux2Transformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=48,
        timestep_guidance_channels=32,
        axes_dims_rope=(4, 4, 4, 4),
        guidance_embeds=False,
    )
    return Flux2KleinPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        transformer=transformer.eval(),
    )


# name: (builder, call options): small sizes, a short text, 2 steps, numpy output
PIPELINES = {
    "chroma": (
        build_tiny_chroma,
        {"height": 32, "width": 32, "max_sequence_length": 16, "guidance_scale": 3.0, "negative_prompt": "a blue ball"},
    ),
    "ltx-video": (
        build_tiny_ltx,
        {
            "height": 32,
            "width": 32,
            "num_frames": 9,
            "max_sequence_length": 16,
            "guidance_scale": 3.0,
            "negative_prompt": "a blue ball",
        },
    ),
    "flux2-klein": (
        build_tiny_flux2_klein,
        {"height": 32, "width": 32, "max_sequence_length": 16, "text_encoder_out_layers": (1, 2, 2)},
    ),
    "wan": (
        build_tiny_wan,
        {
            "height": 16,
            "width": 16,
            "num_frames": 5,
            "max_sequence_length": 16,
            "guidance_scale": 3.0,
            "negative_prompt": "a blue ball",
        },
    ),
}
