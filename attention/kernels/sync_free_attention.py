"""The sync-free `torch` path of both PLADIS rules: few, large launches and no host–device sync.

It is the GPU path when no Triton kernel serves a call (and `PLADIS_KERNEL=torch` anywhere): query
chunks sized for GPU memory (one chunk for SDXL and FLUX at 1024²), and for α = 1.5 and 2:

- raw scores `s = Q·(2^e·K)ᵀ` in float32 (a half-precision GEMM with float32 output on CUDA), the
  scale `2^e·f` split so that the power of two goes into the small K and `f ∈ [1, 2)` stays out of
  every full-size pass;
- the exact threshold θ from the descending sort (`sorted_threshold`: cumulative sums and one
  `searchsorted`), in the raw units;
- the sparse map's numerators `[s − θ]_+^p` in V's dtype from two fused passes (`maximum`, then
  `mse_loss`/`sub` writing V's dtype: the weights rounded once, as the Triton kernels round them);
- the dense part from the fused SDPA kernel stock attention uses (`F.scaled_dot_product_attention`,
  or the fused op that also returns the log-sum-exp), so no softmax map is ever written;
- one GEMM per batch index that adds `λ·(sparse map)·V` to `(1 − λ)·softmax·V` in place
  (`baddbmm_`), in the processors' (B, N, H, D) memory.

Every full-size tensor is written once or twice (about 27 score-sized passes for SDXL's 4096-query
call, counted by `scripts/dev/dispatch_counter.py`), and no op reads a tensor back to the host. Other α
take `sparse_maps`' fixed bisection on materialised weights.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .dense_attention import dense_attention_and_log_normaliser
from .kernel_calls import CrossAttentionCall, TextBlockCall
from .masks import four_dims, mask_for_rows, row_values
from .sorted_threshold import centred_rows, sorted_support_threshold
from .sparse_maps import pladis_shift_, pladis_weights_

# Scores per chunk: 2^26 float32 (256 MB a buffer, ~1.5 GB at the peak of the sort-based threshold),
# so SDXL's 2 × 10 × 4096 × 77 and FLUX's 24 × 4096 × 512 image×text block at 1024² are one chunk each.
_CHUNK_ELEMENTS = 1 << 26
_HALF = (torch.float16, torch.bfloat16)
# Masked keys are moved to −2^50 (scaled units) instead of −inf, so every prefix sum stays finite; a row
# whose threshold lands below a quarter of that has no finite key, and its sparse map is 0.
_MASKED = -(2.0**50)


def _power(alpha: float) -> int | None:
    """The exponent of the closed-form sparse map (2 for entmax15, 1 for sparsemax), None for other α."""
    return {1.5: 2, 2.0: 1}.get(alpha)


def _as_batches(tensor: torch.Tensor) -> list[torch.Tensor]:
    """3-D views (batch, rows, cols) covering a (…, rows, cols) tensor, without copying a 4-D one
    (the processors' (B, H, N, D) views of (B, N, H, D) memory: each batch index is a strided GEMM)."""
    if tensor.dim() == 4:
        return list(tensor.unbind(0))
    return [tensor.reshape(-1, *tensor.shape[-2:])]


def _half_gemm(query: torch.Tensor, key: torch.Tensor) -> bool:
    """Whether QKᵀ runs as a half-precision GEMM with float32 output (CUDA `bmm(out_dtype=)`)."""
    return query.is_cuda and query.dtype in _HALF and key.dtype == query.dtype


def _raw_scores(query: torch.Tensor, key: torch.Tensor, key_factor: float, compute: torch.dtype) -> torch.Tensor:
    """`Q·(key_factor·K)ᵀ` (key_factor a power of two: exact) in `compute` precision, (…, N, L)."""
    shape = (*query.shape[:-1], key.shape[-2])
    scores = torch.empty(shape, device=query.device, dtype=compute)
    keys = key.expand(*query.shape[:-2], *key.shape[-2:]) * key_factor
    if _half_gemm(query, keys):
        for q, k, out in zip(_as_batches(query), _as_batches(keys), _as_batches(scores), strict=True):
            torch.bmm(q, k.transpose(-1, -2), out_dtype=torch.float32, out=out)
    else:  # products of half values are exact in float32: the same scores, where half GEMMs are unavailable
        torch.matmul(query.to(compute), keys.to(compute).transpose(-1, -2), out=scores)
    return scores


def _dense_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None, scale: float
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`(softmax(z)·V, logsumexp(z) or None)` from the fused SDPA kernel stock attention would run."""
    fused = dense_attention_and_log_normaliser(query, key, value, mask, scale)
    if fused is not None:
        return fused
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scale), None


def _sparse_numerators(
    query: torch.Tensor,
    key: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float,
    alpha: float,
    weight_dtype: torch.dtype,
) -> tuple[torch.Tensor, float]:
    """`(W, mass)`: entmax_α(z) = W / mass with `W = [s − θ]_+^p` in `weight_dtype`.

    s are the raw scores in units where `z = f·s`, f ∈ [1, 2): the power of two of the scale goes
    into K (exact), so `mass = 4/f²` for α = 1.5 and `1/f` for α = 2 lies in [1, 4] and half-precision
    W neither overflows nor underflows. The threshold comes from the sorted rows centred on their
    maximum; θ = max + τ is kept in float64, so W (computed in float64 by the fused elementwise
    kernels and rounded once into `weight_dtype`) loses no digit to θ's magnitude. For α = 1.5,
    `W = (max(s, θ) − θ)²` where the maximum is stored in float32: keys below θ get at most (float32
    spacing of θ)²/4 instead of 0, far below any weight's rounding; for α = 2, `W = [s − θ]_+`."""
    mantissa, exponent = math.frexp(scale)  # scale = mantissa·2^exponent, mantissa ∈ [0.5, 1)
    key_factor, factor = math.ldexp(1.0, exponent - 1), 2.0 * mantissa
    compute = torch.float64 if query.dtype == torch.float64 else torch.float32
    scores = _raw_scores(query, key, key_factor, compute)
    if mask is not None:  # masked keys at a finite floor, so every prefix sum stays finite
        scores.add_(mask.to(compute).clamp_min(_MASKED).div_(factor))
    power = _power(alpha)
    mass = 4.0 / factor**2 if power == 2 else 1.0 / factor
    centred, top = centred_rows(torch.sort(scores, dim=-1, descending=True).values)
    threshold = sorted_support_threshold(centred, mass, power).double().add_(top)
    if mask is not None:  # rows with no finite key: θ above every entry (and a float32 value): a zero map
        threshold.clamp_min_(_MASKED / 4)
    numerators = torch.empty(scores.shape, device=scores.device, dtype=weight_dtype)
    if power == 2:  # (s∨θ − θ)²: below θ at most (spacing of θ)²/4, far below the weights' rounding
        clipped = torch.maximum(scores, threshold, out=scores)
        torch.ops.aten.mse_loss.out(clipped, threshold.expand_as(clipped), 0, out=numerators)
    else:  # s − θ rounded once into the weights' dtype, then exact zeros below θ
        torch.sub(scores, threshold, out=numerators).clamp_min_(0.0)
    return numerators, mass


def _row_chunks(rows: slice, batch_heads: int, keys: int) -> list[slice]:
    """Equal slices of `rows` holding about `_CHUNK_ELEMENTS` scores each (shapes only: no sync)."""
    per_chunk = max(1, _CHUNK_ELEMENTS // max(1, batch_heads * keys))
    return [slice(start, min(start + per_chunk, rows.stop)) for start in range(rows.start, rows.stop, per_chunk)]


def _value_dtype(query: torch.Tensor, value: torch.Tensor) -> torch.dtype:
    """The dtype of the `A·V` GEMM: V's half dtype where Q is in it too (weights rounded to it, as
    flash attention rounds its weights), else float32 (float64 kept)."""
    if value.dtype in _HALF and query.dtype == value.dtype:
        return value.dtype
    return torch.float64 if query.dtype == torch.float64 else torch.float32


def _mask_4d(mask: torch.Tensor | None, query: torch.Tensor, keys: int) -> torch.Tensor | None:
    """An additive mask broadcastable to `four_dims(query)` × `keys` (kept small where it broadcasts)."""
    if mask is None or (query.dim() <= 4 and mask.dim() <= 4):
        return four_dims(mask)
    return four_dims(mask.expand(*query.shape[:-1], keys))


def sync_free_pladis_attention(call: CrossAttentionCall) -> torch.Tensor:
    """`(softmax(z) + λ·(entmax_α(z) − softmax(z)))·V`, `z = scale·QKᵀ + mask` (additive), in `query`'s dtype."""
    query, key, value, mask, scale = call.query, call.key, call.value, call.mask, call.scale
    pladis_scale, pladis_alpha = call.settings.pladis_scale, call.settings.pladis_alpha
    if _power(pladis_alpha) is None:
        return _bisected_pladis_attention(query, key, value, pladis_scale, pladis_alpha, mask, scale)
    shape = (*query.shape[:-1], value.shape[-1])
    query4 = four_dims(query)
    leading = query4.shape[:-2]
    key4 = four_dims(key.expand(*query.shape[:-2], *key.shape[-2:]))
    value4 = four_dims(value.expand(*query.shape[:-2], *value.shape[-2:]))
    mask4 = _mask_4d(mask, query, key.shape[-2])
    dtype = _value_dtype(query, value)
    value_in = value4.to(dtype)
    outputs = []
    for rows in _row_chunks(slice(0, query4.shape[-2]), leading.numel(), key4.shape[-2]):
        chunk_query, chunk_mask = query4[..., rows, :], mask_for_rows(mask4, rows)
        numerators, mass = _sparse_numerators(chunk_query, key4, chunk_mask, scale, pladis_alpha, dtype)
        output = _dense_attention(chunk_query, key4, value4, chunk_mask, scale)[0].to(dtype)
        # (1 − λ)·softmax·V + λ·(W/mass)·V, one GEMM per batch index, in place in the dense output
        for out, weights, values in zip(
            _as_batches(output), _as_batches(numerators), _as_batches(value_in), strict=True
        ):
            out.baddbmm_(weights, values, beta=1.0 - pladis_scale, alpha=pladis_scale / mass)
        outputs.append(output)
    output = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=-2)
    return output.to(query.dtype).reshape(shape)


def sync_free_text_block_correction_(call: TextBlockCall) -> torch.Tensor:
    """Add `m·λ·(entmax_α(z_txt) − softmax(z_txt))·V_txt` to the image rows of `call.output` (the dense
    `softmax(z)·V`), with `m` from the dense log-sum-exp (`log_normaliser`) or given (`text_mass`).

    `softmax(z_txt)·V_txt` and its log-sum-exp come from a fused SDPA call over the text keys alone,
    so `m = exp(lse_txt − lse)`; the sparse half is one GEMM over the numerators, in float32."""
    if _power(call.settings.pladis_alpha) is None:
        return _bisected_text_block_correction_(call)
    output, query, key, value, text, image = call.output, call.query, call.key, call.value, call.text, call.image
    mask, scale, log_normaliser, text_mass = call.mask, call.scale, call.log_normaliser, call.text_mass
    pladis_scale, pladis_alpha = call.settings.pladis_scale, call.settings.pladis_alpha
    key_text, value_text = key[..., text, :], value[..., text, :]
    dtype = _value_dtype(query, value)
    value_in = value_text.to(dtype)
    batch_heads = query.shape[:-2].numel()
    for rows in _row_chunks(image, batch_heads, text.stop - text.start):
        chunk_query, chunk_mask = query[..., rows, :], mask_for_rows(mask, rows)
        numerators, mass = _sparse_numerators(chunk_query, key_text, chunk_mask, scale, pladis_alpha, dtype)
        dense, text_normaliser = _dense_attention(chunk_query, key_text, value_text, chunk_mask, scale)
        if text_mass is not None:
            row_weight = row_values(text_mass, rows).float()
        elif log_normaliser is not None:
            if text_normaliser is None:  # no fused op gave it: from the scores (a fallback, not the GPU path)
                scores = _raw_scores(chunk_query, key_text, 1.0, torch.float32).mul_(scale)
                if chunk_mask is not None:
                    scores.add_(chunk_mask)
                text_normaliser = torch.logsumexp(scores, dim=-1)
            row_weight = (text_normaliser - log_normaliser[..., rows]).exp_()[..., None]
        else:
            row_weight = torch.ones((), device=query.device)
        # The sparse product in float32, minus mass × the dense text output, then scaled per row and added.
        sparse = torch.empty((*numerators.shape[:-1], value.shape[-1]), device=query.device, dtype=torch.float32)
        if _half_gemm(numerators, value_in):
            for weights, values, out in zip(
                _as_batches(numerators), _as_batches(value_in), _as_batches(sparse), strict=True
            ):
                torch.bmm(weights, values, out_dtype=torch.float32, out=out)
        else:
            torch.matmul(numerators.float(), value_in.float(), out=sparse)
        shift = torch.sub(sparse, dense, alpha=mass, out=sparse)  # W·V − mass·softmax·V
        output[..., rows, :].addcmul_(shift, row_weight * (pladis_scale / mass))
    return output


def _bisected_pladis_attention(query, key, value, pladis_scale, pladis_alpha, mask, scale) -> torch.Tensor:
    """Other α: materialised float32 weights with `sparse_maps`' fixed bisection (no sync), one `A·V`."""
    key_t = key.float().transpose(-1, -2)
    outputs = []
    for rows in _row_chunks(slice(0, query.shape[-2]), query.shape[:-2].numel(), key.shape[-2]):
        scores = torch.matmul(query[..., rows, :].float(), key_t).mul_(scale)
        chunk_mask = mask_for_rows(mask, rows)
        if chunk_mask is not None:
            scores.add_(chunk_mask)
        weights = pladis_weights_(scores, pladis_scale, pladis_alpha, sync_free=True)
        outputs.append(torch.matmul(weights, value.float()))
    output = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=-2)
    return output.to(query.dtype)


def _bisected_text_block_correction_(call: TextBlockCall) -> torch.Tensor:
    """Other α: the correction from materialised float32 maps with the fixed bisection (no sync)."""
    output, query, key, value, text, image = call.output, call.query, call.key, call.value, call.text, call.image
    mask, scale, log_normaliser, text_mass = call.mask, call.scale, call.log_normaliser, call.text_mass
    pladis_scale, pladis_alpha = call.settings.pladis_scale, call.settings.pladis_alpha
    key_t, value_text = key[..., text, :].float().transpose(-1, -2), value[..., text, :].float()
    for rows in _row_chunks(image, query.shape[:-2].numel(), text.stop - text.start):
        scores = torch.matmul(query[..., rows, :].float(), key_t).mul_(scale)
        chunk_mask = mask_for_rows(mask, rows)
        if chunk_mask is not None:
            scores.add_(chunk_mask)
        shift = pladis_shift_(
            scores,
            pladis_scale,
            pladis_alpha,
            sync_free=True,
            log_normaliser=row_values(log_normaliser, rows),
            text_mass=row_values(text_mass, rows),
        )
        output[..., rows, :].add_(torch.matmul(shift, value_text).to(output.dtype))
    return output
