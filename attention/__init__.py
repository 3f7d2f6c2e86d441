"""PLADIS attention: exact sparse maps, the PLADIS processors, and their install/restore.

Import from here: `from attention import apply_pladis, PLADISAttnProcessor`.
"""

from .functional import pladis_scaled_dot_product_attention
from .install import apply_pladis, pladis_processors, swapped_attn_processors
from .processor import PLADISAttnProcessor
from .sparse_maps import entmax_attention, pladis_weights, softmax_attention
from .validation import check_pladis_alpha, check_pladis_scale

__all__ = [
    "PLADISAttnProcessor",
    "apply_pladis",
    "check_pladis_alpha",
    "check_pladis_scale",
    "entmax_attention",
    "pladis_processors",
    "pladis_scaled_dot_product_attention",
    "pladis_weights",
    "softmax_attention",
    "swapped_attn_processors",
]
