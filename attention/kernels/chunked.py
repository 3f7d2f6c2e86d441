"""The chunked CPU kernel of both PLADIS rules: float32 query chunks over one reused workspace.

Scores are built one query chunk at a time (`query_chunks`), so extra memory stays bounded whatever the
sequence length, and the exact thresholds come from `sparse_maps`' pass solver (it asks the host whether rows
still move: free on a CPU, a sync on a GPU). The cross-attention rule shares one `A·V` product between the dense
and sparse maps; the joint rule adds its image rows' correction to the dense attention the seam computed.
"""

from __future__ import annotations

import torch

from .kernel_calls import CrossAttentionCall, TextBlockCall
from .masks import mask_for_rows, row_values
from .query_chunks import query_chunks
from .sparse_maps import pladis_shift_, pladis_weights_

# Scores per cross-attention query chunk (float32): ~4 MB, so the chunk and its workspace mostly stay in cache
# between the passes of the threshold search while the matmuls stay efficient (2 and 8 MB measured slower).
CROSS_ATTENTION_CHUNK = 1 << 20
# Image×text scores per joint chunk (float32): ~8 MB. At FLUX's 24 heads × 512 text tokens (~171 image rows a
# chunk) 2, 4 and 16 MB measured no faster on 2 CPU threads (the 77-key U-Net rows prefer 4 MB).
TEXT_BLOCK_CHUNK = 1 << 21


def _output_like(query: torch.Tensor, value_dim: int) -> torch.Tensor:
    """A float32 (..., Nq, Dv) result laid out like `query`: for the processors' (B, N, H, D) memory
    seen as (B, H, N, D), merging heads afterwards is then a view rather than a copy (as for SDPA)."""
    shape = (*query.shape[:-1], value_dim)
    if query.dim() == 4 and query.transpose(1, 2).is_contiguous():
        return query.new_empty((shape[0], shape[2], shape[1], shape[3]), dtype=torch.float32).transpose(1, 2)
    return query.new_empty(shape, dtype=torch.float32)


def chunked_pladis_attention(call: CrossAttentionCall) -> torch.Tensor:
    """The cross-attention rule in `query`'s dtype: float32 query chunks over one reused workspace, exact
    pass-solver thresholds."""
    query, key, value, settings, mask, scale = call.query, call.key, call.value, call.settings, call.mask, call.scale
    # K and V in float32 and contiguous once (K scaled once), so no chunk's matmul copies them again.
    key_t = key.float().mul(scale).contiguous().transpose(-1, -2)
    value_f = value.float().contiguous()
    output = _output_like(query, value.shape[-1])
    rows = slice(0, query.shape[-2])
    for chunk in query_chunks(query, rows, key.shape[-2], value.shape[-1], CROSS_ATTENTION_CHUNK):
        scores = torch.matmul(chunk.query, key_t, out=chunk.scores)
        if mask is not None:
            scores.add_(mask_for_rows(mask, chunk.rows))
        weights = pladis_weights_(scores, settings.pladis_scale, settings.pladis_alpha, chunk.workspace)
        output[..., chunk.rows, :].copy_(torch.matmul(weights, value_f, out=chunk.product))
    return output.to(query.dtype)


def chunked_text_block_correction_(call: TextBlockCall) -> torch.Tensor:
    """Add `m·λ·(entmax_α(z_txt) − softmax(z_txt))·V_txt` to the image rows of the dense `call.output`, image-row
    chunks over one reused workspace; `m` from the dense log-sum-exp (`log_normaliser`) or given (`text_mass`)."""
    output, query, key, value, text, image = call.output, call.query, call.key, call.value, call.text, call.image
    settings, mask, scale = call.settings, call.mask, call.scale
    # Text keys scaled once and contiguous, so no chunk's matmul scales or copies them again.
    key_text_t = key[..., text, :].float().mul(scale).contiguous().transpose(-1, -2)
    value_text = value[..., text, :].float().contiguous()
    for chunk in query_chunks(query, image, text.stop - text.start, value.shape[-1], TEXT_BLOCK_CHUNK):
        scores = torch.matmul(chunk.query, key_text_t, out=chunk.scores)
        if mask is not None:
            scores.add_(mask_for_rows(mask, chunk.rows))
        # The correction m·λ·(entmax − softmax)·V_txt (m·λ folded into the map's row scale); the
        # dense part is already in `output`.
        shift = pladis_shift_(
            scores,
            settings.pladis_scale,
            settings.pladis_alpha,
            chunk.workspace,
            log_normaliser=row_values(call.log_normaliser, chunk.rows),
            text_mass=row_values(call.text_mass, chunk.rows),
        )
        output[..., chunk.rows, :].add_(torch.matmul(shift, value_text, out=chunk.product))
    return output
