"""The sync-free `torch` path of both PLADIS rules: few, large launches and no host–device sync.

It is the GPU path when no Triton kernel serves a call (and `PLADIS_KERNEL=torch` anywhere): query
chunks sized for GPU memory (one chunk for SDXL and FLUX at 1024²), scores from half-precision
GEMMs with float32 accumulation where CUDA offers them, the exact sort-based thresholds of
`sorted_threshold`, and one `A·V` product per chunk. No op reads a tensor back to the host.
"""

from __future__ import annotations

import torch

from .masks import mask_for_rows, row_values
from .sparse_maps import pladis_shift_, pladis_weights_

# Scores per chunk: 2^26 float32 (256 MB a buffer, ~1.5 GB at the peak of the sort-based threshold),
# so SDXL's 2 × 10 × 4096 × 77 and FLUX's 24 × 4096 × 512 image×text block at 1024² are one chunk each.
_CHUNK_ELEMENTS = 1 << 26
_HALF = (torch.float16, torch.bfloat16)


def _half_gemm(query: torch.Tensor, key: torch.Tensor) -> bool:
    """Whether QKᵀ runs as a half-precision GEMM with float32 output (CUDA `bmm(out_dtype=)`)."""
    return query.is_cuda and query.dtype in _HALF and key.dtype == query.dtype and query.shape[:-2] == key.shape[:-2]


def _keys_for_scores(key: torch.Tensor, half_gemm: bool) -> torch.Tensor:
    """Kᵀ as the score GEMM reads it: (batch, D, keys) in the input dtype, or float32 (…, D, keys)."""
    if half_gemm:
        return key.reshape(-1, *key.shape[-2:]).transpose(-1, -2)
    return key.float().transpose(-1, -2)


def _scores(
    query: torch.Tensor, key_t: torch.Tensor, scale: float, mask: torch.Tensor | None, half_gemm: bool
) -> torch.Tensor:
    """Float32 `scale·QKᵀ + mask` for a chunk of query rows."""
    if half_gemm:
        flat = torch.bmm(query.reshape(-1, *query.shape[-2:]), key_t, out_dtype=torch.float32)
        scores = flat.view(*query.shape[:-1], key_t.shape[-1])
    else:
        scores = torch.matmul(query.float(), key_t)
    scores.mul_(scale)
    return scores if mask is None else scores.add_(mask)


def _row_chunks(rows: slice, batch_heads: int, keys: int) -> list[slice]:
    """Equal slices of `rows` holding about `_CHUNK_ELEMENTS` scores each (shapes only: no sync)."""
    per_chunk = max(1, _CHUNK_ELEMENTS // max(1, batch_heads * keys))
    return [slice(start, min(start + per_chunk, rows.stop)) for start in range(rows.start, rows.stop, per_chunk)]


def sync_free_pladis_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    pladis_scale: float,
    pladis_alpha: float,
    mask: torch.Tensor | None,
    scale: float,
) -> torch.Tensor:
    """`(softmax(z) + λ·(entmax_α(z) − softmax(z)))·V`, `z = scale·QKᵀ + mask` (additive), in `query`'s dtype."""
    half_gemm = _half_gemm(query, key)
    key_t = _keys_for_scores(key, half_gemm)
    value_in = value if half_gemm else value.float()
    batch_heads = query.shape[:-2].numel()
    outputs = []
    for rows in _row_chunks(slice(0, query.shape[-2]), batch_heads, key.shape[-2]):
        scores = _scores(query[..., rows, :], key_t, scale, mask_for_rows(mask, rows), half_gemm)
        weights = pladis_weights_(scores, pladis_scale, pladis_alpha, sync_free=True)
        outputs.append(torch.matmul(weights.to(value_in.dtype), value_in))
    output = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=-2)
    return output.to(query.dtype)


def sync_free_text_block_correction_(
    output: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    text: slice,
    image: slice,
    pladis_scale: float,
    pladis_alpha: float,
    mask: torch.Tensor | None,
    scale: float,
    log_normaliser: torch.Tensor | None = None,
    text_mass: torch.Tensor | None = None,
) -> torch.Tensor:
    """Add `m·λ·(entmax_α(z_txt) − softmax(z_txt))·V_txt` to the image rows of `output` (the dense
    `softmax(z)·V`), with `m` from the dense log-sum-exp (`log_normaliser`) or given (`text_mass`)."""
    key_text, value_text = key[..., text, :], value[..., text, :]
    half_gemm = _half_gemm(query, key_text)
    key_t = _keys_for_scores(key_text, half_gemm)
    value_in = value_text if half_gemm else value_text.float()
    batch_heads = query.shape[:-2].numel()
    for rows in _row_chunks(image, batch_heads, text.stop - text.start):
        scores = _scores(query[..., rows, :], key_t, scale, mask_for_rows(mask, rows), half_gemm)
        shift = pladis_shift_(
            scores,
            pladis_scale,
            pladis_alpha,
            sync_free=True,
            log_normaliser=row_values(log_normaliser, rows),
            text_mass=row_values(text_mass, rows),
        )
        output[..., rows, :].add_(torch.matmul(shift.to(value_in.dtype), value_in))
    return output
