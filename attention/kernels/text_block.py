"""PLADIS for joint text+image attention (FLUX, SD3): only the image-query × text-key block changes.

With `m` = the dense softmax mass an image query puts on the text keys, that block becomes
`m·[λ·entmax_α(z_txt) + (1 − λ)·softmax(z_txt)]`; this module computes it as ordinary SDPA plus a
correction that needs only image×text scores, one query chunk at a time, so memory grows as
N·L_txt, never N².
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..settings import PLADISSettings
from .cross_attention import differentiable_score_maps, needs_autograd
from .masks import additive_mask, mask_for_rows, row_values
from .query_chunks import query_chunks
from .reference import computing_reference, reference_text_block
from .sdpa_backend import CUDNN, EFFICIENT, FLASH, stock_sdpa_backend
from .sparse_maps import pladis_shift_
from .sync_free_attention import sync_free_text_block_correction_
from .table import choose_kernel, run_triton, triton_gap

# Image×text scores per query chunk (float32): ~8 MB. At FLUX's 24 heads × 512 text tokens (~171 image
# rows a chunk) 2, 4 and 16 MB measured no faster on 2 CPU threads (the 77-key U-Net rows prefer 4 MB).
_CHUNK_ELEMENTS = 1 << 21


def joint_token_slices(sequence_length: int, text_length: int, text_first: bool = True) -> tuple[slice, slice]:
    """(text, image) token slices of a joint sequence: text first (FLUX `[txt ; img]`) or last (SD3)."""
    if isinstance(text_length, bool) or not isinstance(text_length, int):
        raise TypeError(f"text_length must be an int, got {type(text_length).__name__}: {text_length!r}")
    if not 0 <= text_length <= sequence_length:
        raise ValueError(f"text_length must be in [0, {sequence_length}] (the joint length), got {text_length}")
    image_length = sequence_length - text_length
    if text_first:
        return slice(0, text_length), slice(text_length, sequence_length)
    return slice(image_length, sequence_length), slice(0, image_length)


def dense_attention_and_text_mass(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    text_keys: slice,
    attn_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(softmax(z)·V, m)` from one SDPA call, with `m = Σ_{k ∈ text_keys} softmax(z)[k]` per query.

    V gets one extra channel that is 1 on the text keys and 0 elsewhere, so that channel of the
    output is exactly `m`. Q, K and V are zero-padded to one head dim (a multiple of 8): QKᵀ is
    unchanged (the scale is passed explicitly) and the fused, O(N)-memory kernels stay eligible.
    Both results are views of the one padded output (five launches on a GPU with SDPA's).
    """
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    value_dim = value.shape[-1]
    padded_dim = -(-max(query.shape[-1], value_dim + 1) // 8) * 8
    extended_value = F.pad(value, (0, padded_dim - value_dim))
    extended_value[..., text_keys, value_dim] = 1
    output = F.scaled_dot_product_attention(
        F.pad(query, (0, padded_dim - query.shape[-1])),
        F.pad(key, (0, padded_dim - key.shape[-1])),
        extended_value,
        attn_mask=attn_mask,
        scale=scale,
    )
    return output[..., :value_dim], output[..., value_dim]


def dense_attention_and_log_normaliser(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """`(softmax(z)·V, logsumexp(z))` from one fused SDPA op that returns the log-sum-exp, or None
    where none serves the case (then `dense_attention_and_text_mass` does, with a padded channel).

    On CPU the flash kernel takes any mask; on CUDA the op stock SDPA runs on the card serves unmasked
    inputs (`cuda_attention_with_log_normaliser`); masked CUDA calls go through SDPA itself, which
    prepares the mask for whichever kernel it picks.
    """
    if query.shape[-1] != value.shape[-1] or key.shape[-1] != query.shape[-1]:
        return None  # the fused kernels take one head size
    if query.device.type == "cpu" and query.dtype in (torch.float32, torch.float16, torch.bfloat16):
        if attn_mask is not None and attn_mask.dtype != query.dtype:  # the kernel takes masks in the query dtype
            if attn_mask.dtype != torch.bool:
                return None
            attn_mask = additive_mask(attn_mask).to(query.dtype)  # 0 / −inf: exact in any float dtype
        output, log_normaliser = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            query, key, value, attn_mask=attn_mask, scale=scale
        )
        return output, log_normaliser
    if query.is_cuda and attn_mask is None and query.shape[-1] % 8 == 0:
        return cuda_attention_with_log_normaliser(query, key, value, scale)
    return None


def cuda_attention_with_log_normaliser(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Unmasked CUDA attention by the fused op stock SDPA runs on this card (`stock_sdpa_backend`):
    `(softmax(z)·V, logsumexp(z))`, the log-sum-exp float32 (B, H, N), natural log — or None where
    stock SDPA would run its unfused math (bfloat16 below sm80), which returns none.

    cuDNN (sm90/sm100 by default) returns it as (B, H, N, 1), the memory-efficient op (float32, and
    everything below sm80, where flash does not run) padded to a multiple of 32 rows; flash as is.
    """
    backend = stock_sdpa_backend(query, key, value)
    if backend == FLASH:
        output, log_normaliser = torch.ops.aten._scaled_dot_product_flash_attention(query, key, value, scale=scale)[:2]
        return output, log_normaliser
    if backend == CUDNN:
        output, log_normaliser = torch.ops.aten._scaled_dot_product_cudnn_attention(
            query, key, value, None, True, scale=scale
        )[:2]
        return output, log_normaliser.squeeze(-1)
    if backend == EFFICIENT:
        output, log_normaliser = torch.ops.aten._scaled_dot_product_efficient_attention(
            query, key, value, None, True, scale=scale
        )[:2]
        return output, log_normaliser[..., : query.shape[-2]]
    return None


def text_block_pladis_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    text_length: int,
    pladis_scale: float,
    pladis_alpha: float = 1.5,
    *,
    text_first: bool = True,
    attn_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Joint attention `A·V` where PLADIS changes only the image-query × text-key block of `A`.

    `query`, `key`, `value` are (B, H, N, D) over one joint sequence of N tokens whose `text_length`
    text tokens come first (`text_first=True`, FLUX) or last (SD3); `z = scale·QKᵀ + mask` (SDPA's
    mask semantics). For an image query with dense text mass `m = Σ_txt softmax(z)`:

        out = SDPA(Q, K, V) + m·λ·(entmax_α(z_txt) − softmax(z_txt))·V_txt,

    i.e. its text block is `m·[λ·entmax_α(z_txt) + (1 − λ)·softmax(z_txt)]` (maps over the text
    columns only), its image block and the text-query rows stay dense, and every row sums to 1.
    The maps are float32; the result has `query`'s dtype. λ = 0 is plain SDPA. When autograd records
    the call, the correction is computed materialised and differentiable (same values, N·L_txt scores).
    λ and α are checked here, once (`PLADISSettings`); the processors call `text_block_rule` directly.
    """
    settings = PLADISSettings(pladis_scale, pladis_alpha)
    return text_block_rule(
        query,
        key,
        value,
        text_length,
        settings.pladis_scale,
        settings.pladis_alpha,
        text_first=text_first,
        attn_mask=attn_mask,
        scale=scale,
    )


def text_block_rule(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    text_length: int,
    pladis_scale: float,
    pladis_alpha: float,
    *,
    text_first: bool = True,
    attn_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """The joint text-block seam (`text_block_pladis_attention`) on λ/α already checked by a
    `PLADISSettings`: it checks the tensors and text length, picks the kernel and trusts its settings."""
    if query.dim() != 4 or key.shape[-2] != query.shape[-2] or value.shape[-2] != query.shape[-2]:
        raise ValueError(
            "text_block_pladis_attention needs (B, H, N, D) query/key/value over one joint sequence, "
            f"got {tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}"
        )
    text, image = joint_token_slices(query.shape[-2], text_length, text_first)
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    if computing_reference():
        return reference_text_block(
            query,
            key,
            value,
            text_length,
            pladis_scale,
            pladis_alpha,
            text_first=text_first,
            attn_mask=attn_mask,
            scale=scale,
        )
    if pladis_scale == 0.0 or text.start == text.stop or image.start == image.stop:
        return F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, scale=scale)

    mask = additive_mask(attn_mask)
    if mask is not None and mask.shape[-1] != 1:
        mask = mask[..., text]
    if needs_autograd(query, key, value, mask):
        output, text_mass = dense_attention_and_text_mass(query, key, value, text, attn_mask, scale)
        # The same correction, materialised and differentiable; zero rows for the text queries line
        # it up with the joint sequence.
        dense, sparse = differentiable_score_maps(
            query[..., image, :], key[..., text, :], scale, mask_for_rows(mask, image), pladis_alpha
        )
        shift = text_mass[..., image, None].to(dense.dtype) * pladis_scale * (sparse - dense)
        correction = shift @ value[..., text, :].to(dense.dtype)
        padding = (0, 0, text.stop - text.start, 0) if text_first else (0, 0, 0, text.stop - text.start)
        return output + F.pad(correction, padding).to(output.dtype)
    kernel = choose_kernel(
        "text-block", query.device, triton_gap(query, text.stop - text.start, value.shape[-1], pladis_alpha, mask)
    )
    dense = dense_attention_and_log_normaliser(query, key, value, attn_mask, scale)
    log_normaliser = text_mass = None
    if dense is None:
        output, text_mass = dense_attention_and_text_mass(query, key, value, text, attn_mask, scale)
    else:
        output, log_normaliser = dense
    arguments = (
        output,
        query,
        key,
        value,
        text,
        image,
        pladis_scale,
        pladis_alpha,
        mask,
        scale,
        log_normaliser,
        text_mass,
    )
    return text_block_correction_(kernel, arguments)


def text_block_correction_(kernel: str, arguments: tuple) -> torch.Tensor:
    """Add the image rows' correction to the dense `output` (the first of `arguments`, which are those of
    `sync_free_text_block_correction_`) with `kernel` (`choose_kernel`'s pick). The text keys are
    `key[..., text, :]` and the corrected rows `query[..., image, :]`: under context parallelism (see
    `context_parallel`) `key` and `value` hold the text gathered from every rank and `query` this rank's shard."""
    if kernel == "torch":
        return sync_free_text_block_correction_(*arguments)
    if kernel == "triton":
        from .triton_kernels import triton_text_block_correction_

        return run_triton(
            "text-block",
            lambda: triton_text_block_correction_(*arguments),
            lambda: sync_free_text_block_correction_(*arguments),
        )
    return _chunked_text_block_correction_(*arguments)


def _chunked_text_block_correction_(
    output, query, key, value, text, image, pladis_scale, pladis_alpha, mask, scale, log_normaliser, text_mass
) -> torch.Tensor:
    """The CPU path of the correction: image-row chunks over one reused workspace (`query_chunks`)."""
    # Text keys scaled once and contiguous, so no chunk's matmul scales or copies them again.
    key_text_t = key[..., text, :].float().mul(scale).contiguous().transpose(-1, -2)
    value_text = value[..., text, :].float().contiguous()
    for chunk in query_chunks(query, image, text.stop - text.start, value.shape[-1], _CHUNK_ELEMENTS):
        scores = torch.matmul(chunk.query, key_text_t, out=chunk.scores)
        if mask is not None:
            scores.add_(mask_for_rows(mask, chunk.rows))
        # The correction m·λ·(entmax − softmax)·V_txt (m·λ folded into the map's row scale); the
        # dense part is already in `output`.
        shift = pladis_shift_(
            scores,
            pladis_scale,
            pladis_alpha,
            chunk.workspace,
            log_normaliser=row_values(log_normaliser, chunk.rows),
            text_mass=row_values(text_mass, chunk.rows),
        )
        output[..., chunk.rows, :].add_(torch.matmul(shift, value_text, out=chunk.product))
    return output
