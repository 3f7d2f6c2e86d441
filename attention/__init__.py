"""PLADIS attention: exact sparse maps, the model-family registry, the PLADIS processors, and their install/restore.

Import from here: `from attention import apply_pladis, PLADISAttnProcessor`.
"""

from .call_context import TextLength
from .families import FAMILIES, Family, TextAttention, family_of
from .flux_processor import recorded_text_length
from .functional import pladis_scaled_dot_product_attention
from .install import apply_pladis, pladis_processors, swapped_attn_processors
from .joint_text_block import dense_attention_and_text_mass, text_block_pladis_attention
from .processors import (
    PLADISAttnProcessor,
    PLADISFluxAttnProcessor,
    PLADISJointAttnProcessor,
    PLADISProcessor,
    PLADISSanaAttnProcessor,
    pladis_processor_class,
)
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
    "FAMILIES",
    "Family",
    "PLADISProcessor",
    "TextAttention",
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
    "family_of",
    "gaussian_blur_tokens",
    "pladis_processor_class",
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
