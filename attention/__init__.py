"""PLADIS attention: exact sparse maps, the model-family registry, the PLADIS processors, and their install/restore.

The user API is what the README's "The `attention` API" section lists: `from attention import apply_pladis,
PLADISAttnProcessor`. Everything else is internal and imported from its submodule by the code that uses it.
"""

from .call_context import TextLength
from .families import FAMILIES, Family, TextAttention, family_of
from .flux_processor import recorded_text_length
from .functional import pladis_scaled_dot_product_attention
from .install import apply_pladis, pladis_processors, swapped_attn_processors
from .joint_text_block import text_block_pladis_attention
from .processors import (
    PLADISAttnProcessor,
    PLADISFluxAttnProcessor,
    PLADISJointAttnProcessor,
    PLADISProcessor,
    PLADISSanaAttnProcessor,
    pladis_processor_class,
)
from .sparse_maps import entmax_attention, pladis_weights, softmax_attention

__all__ = [
    "FAMILIES",
    "Family",
    "PLADISAttnProcessor",
    "PLADISFluxAttnProcessor",
    "PLADISJointAttnProcessor",
    "PLADISProcessor",
    "PLADISSanaAttnProcessor",
    "TextAttention",
    "TextLength",
    "apply_pladis",
    "entmax_attention",
    "family_of",
    "pladis_processor_class",
    "pladis_processors",
    "pladis_scaled_dot_product_attention",
    "pladis_weights",
    "recorded_text_length",
    "softmax_attention",
    "swapped_attn_processors",
    "text_block_pladis_attention",
]
