"""PLADIS attention: exact sparse maps, the PLADIS processors, and their install/restore.

Import from here: `from attention import apply_pladis, PLADISAttnProcessor`.
"""

from .flux_processor import PLADISFluxAttnProcessor, TextLength, recorded_text_length
from .functional import pladis_scaled_dot_product_attention
from .install import PLADIS_PROCESSORS, apply_pladis, pladis_processors, swapped_attn_processors
from .joint_text_block import dense_attention_and_text_mass, text_block_pladis_attention
from .processor import PLADISAttnProcessor
from .sana_processor import PLADISSanaAttnProcessor
from .sd3_processor import PLADISJointAttnProcessor
from .seg_blur import gaussian_blur_tokens, token_grid
from .seg_processor import LatentSize, SmoothedEnergyAttnProcessor, recording_latent_size, seg_attn_processors
from .sparse_maps import entmax_attention, pladis_weights, softmax_attention
from .validation import (
    check_applied_layers,
    check_flag,
    check_guidance_scale,
    check_pladis_alpha,
    check_pladis_scale,
    check_seg_blur_sigma,
)

__all__ = [
    "LatentSize",
    "PLADISAttnProcessor",
    "PLADISFluxAttnProcessor",
    "PLADISJointAttnProcessor",
    "PLADISSanaAttnProcessor",
    "PLADIS_PROCESSORS",
    "SmoothedEnergyAttnProcessor",
    "TextLength",
    "apply_pladis",
    "check_applied_layers",
    "check_flag",
    "check_guidance_scale",
    "check_pladis_alpha",
    "check_pladis_scale",
    "check_seg_blur_sigma",
    "dense_attention_and_text_mass",
    "entmax_attention",
    "gaussian_blur_tokens",
    "pladis_processors",
    "pladis_scaled_dot_product_attention",
    "pladis_weights",
    "recorded_text_length",
    "recording_latent_size",
    "seg_attn_processors",
    "softmax_attention",
    "swapped_attn_processors",
    "text_block_pladis_attention",
    "token_grid",
]
