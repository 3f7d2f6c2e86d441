"""Triton kernels for both PLADIS rules: one launch per call, the whole score row in registers.

Each program takes `BLOCK_M` query rows of one (batch, head) and all keys (≤ 512, padded to a power
of two): scores `QKᵀ` with float32 accumulation, softmax numerators, the exact α-entmax threshold
(`sparse_maps`' pass solver, looping on the chip: no sort, no host sync), the blend, and `A·V`, all
without leaving the chip. Inputs are read through their strides (the processors' (B, N, H, D)
memory as is), in float16, bfloat16 or float32; outputs are written in the input dtype.

- `triton_pladis_attention`: the cross-attention rule, `(softmax + λ·(entmax − softmax))·V`.
- `triton_text_block_correction_`: the joint text-block rule's correction, added in place to the
  image rows of the dense attention output, with the text mass taken from the dense attention's
  log-sum-exp (or given, where no fused op returned one).

Developed and tested on CPU with Triton's interpreter (`TRITON_INTERPRET=1`); there `tl.dot` is
exact float32, on a GPU float32 inputs use `input_precision="ieee"` for the same result, and half
inputs use half MMAs with float32 accumulation (the weights rounded to the value dtype for `A·V`, as
flash attention rounds its softmax weights).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .kernel_choice import interpreting

_FLOAT32_MIN = tl.constexpr(-3.4028234663852886e38)  # jit code reads only constexpr globals
# The pass solver's constants, as in `sparse_maps` (τ ∈ [−1, 0): 1e-6 is ~16 float32 ulps).
_THRESHOLD_TOL = tl.constexpr(1e-6)
# How the two products are computed: float32 inputs exactly ("ieee"), half inputs on half MMAs with
# float32 accumulation; Triton's interpreter cannot run bfloat16 dots, so there half inputs are
# widened to float32 first (exact: half values are exact in TF32).
_DOT_IEEE = tl.constexpr(0)
_DOT_HALF = tl.constexpr(1)
_DOT_WIDENED = tl.constexpr(2)
_MAX_PASSES = tl.constexpr(50)
_SAFE_PASSES = tl.constexpr(8)


@triton.jit
def _entmax_threshold(x, BLOCK_M: tl.constexpr, SPARSEMAX: tl.constexpr):
    """τ per row of `x = (α−1)·(z − max z)` (−inf on masked and padded keys), α = 2 or 1.5, exact.

    The pass iteration of `sparse_maps.entmax_threshold`, in registers: α = 2 is Michelot's support
    iteration (monotone from τ = −1, exact once the support stops shrinking); α = 1.5 jumps to the
    root of the quadratic on the support at τ and stops once two passes on opposite sides of the
    root see supports of the same size (then that root is exact), finishing with monotone Newton
    steps after `_SAFE_PASSES`. The loop runs while any row of the tile moves, on the chip.
    """
    tau = tl.full([BLOCK_M], -1.0, tl.float32)
    done = tl.zeros([BLOCK_M], dtype=tl.int32)
    last_count = tl.full([BLOCK_M], -1.0, tl.float32)
    last_below = tl.zeros([BLOCK_M], dtype=tl.int32)
    passes = 0
    while (passes < _MAX_PASSES) & (tl.min(done, 0) == 0):
        gap = tl.maximum(x - tau[:, None], 0.0)
        count = tl.sum((gap > 0.0).to(tl.float32), 1)
        empty = count == 0.0  # a row with no finite score: nothing to solve, its map is 0
        count = tl.maximum(count, 1.0)  # (and no division by zero on such rows)
        gap_sum = tl.maximum(tl.sum(gap, 1), 1e-30)
        if SPARSEMAX:
            step = (gap_sum - 1.0) / count
            settled = tl.abs(step) <= _THRESHOLD_TOL
        else:
            excess = tl.sum(gap * gap, 1) - 1.0
            below = (excess >= 0.0).to(tl.int32)
            discriminant = tl.maximum(gap_sum * gap_sum - count * excess, 0.0)
            root_step = excess / (gap_sum + tl.sqrt(discriminant))
            safe = passes >= _SAFE_PASSES
            step = tl.where(safe & (below != 0), excess / (2.0 * gap_sum), root_step)
            settled = tl.abs(step) <= _THRESHOLD_TOL
            settled = settled | ((passes < _SAFE_PASSES) & (count == last_count) & (below != last_below))
            last_below = below
        step = tl.where((done != 0) | empty | (step != step), 0.0, step)
        tau = tau + step
        done = done | (settled | empty).to(tl.int32)
        last_count = count
        passes += 1
    return tau


@triton.jit
def _row_scores(
    q_ptr,
    k_ptr,
    m_ptr,
    rows,
    cols,
    row_ok,
    col_ok,
    scale,
    stride_qn,
    stride_qd,
    stride_kn,
    stride_kd,
    stride_mn,
    stride_mk,
    D,
    HAS_MASK: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DK: tl.constexpr,
    DOT: tl.constexpr,
):
    """`scale·QKᵀ + mask` for one tile of rows × all keys, float32, −inf on padded keys."""
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for d0 in tl.static_range(0, BLOCK_D, BLOCK_DK):
        dims = d0 + tl.arange(0, BLOCK_DK)
        dim_ok = dims < D
        q = tl.load(
            q_ptr + rows[:, None] * stride_qn + dims[None, :] * stride_qd,
            mask=row_ok[:, None] & dim_ok[None, :],
            other=0.0,
        )
        k = tl.load(
            k_ptr + cols[None, :] * stride_kn + dims[:, None] * stride_kd,
            mask=col_ok[None, :] & dim_ok[:, None],
            other=0.0,
        )
        if DOT == _DOT_IEEE:
            acc += tl.dot(q, k, input_precision="ieee")
        elif DOT == _DOT_HALF:  # a half-precision MMA, float32 accumulation (as SDPA's)
            acc += tl.dot(q, k)
        else:  # half values are exact in TF32: the same products, where half dots are unavailable
            acc += tl.dot(q.to(tl.float32), k.to(tl.float32), input_precision="tf32")
    z = acc * scale
    if HAS_MASK:
        z += tl.load(
            m_ptr + rows[:, None] * stride_mn + cols[None, :] * stride_mk,
            mask=row_ok[:, None] & col_ok[None, :],
            other=0.0,
        ).to(tl.float32)
    return tl.where(col_ok[None, :], z, float("-inf"))


@triton.jit
def _weighted_values(
    w,
    v_ptr,
    o_ptr,
    rows,
    cols,
    row_ok,
    col_ok,
    stride_vn,
    stride_vd,
    stride_on,
    stride_od,
    DV,
    ACCUMULATE: tl.constexpr,
    DOT: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    BLOCK_DVK: tl.constexpr,
):
    """Write (or add) `w·V` for one tile of rows, accumulated in float32, stored in the output's dtype."""
    for d0 in tl.static_range(0, BLOCK_DV, BLOCK_DVK):
        dims = d0 + tl.arange(0, BLOCK_DVK)
        dim_ok = dims < DV
        v = tl.load(
            v_ptr + cols[:, None] * stride_vn + dims[None, :] * stride_vd,
            mask=col_ok[:, None] & dim_ok[None, :],
            other=0.0,
        )
        if DOT == _DOT_IEEE:
            out = tl.dot(w, v, input_precision="ieee")
        elif DOT == _DOT_HALF:  # the weights in V's dtype, as flash attention does, float32 accumulation
            out = tl.dot(w.to(v.dtype), v)
        else:
            out = tl.dot(w, v.to(tl.float32), input_precision="tf32")
        pointers = o_ptr + rows[:, None] * stride_on + dims[None, :] * stride_od
        store_ok = row_ok[:, None] & dim_ok[None, :]
        if ACCUMULATE:
            out += tl.load(pointers, mask=store_ok, other=0.0).to(tl.float32)
        tl.store(pointers, out.to(o_ptr.dtype.element_ty), mask=store_ok)


@triton.jit
def _dense_and_sparse(z, BLOCK_M: tl.constexpr, SPARSEMAX: tl.constexpr):
    """(exp(z − max z), row sums ≥ 1 (0-rows clamped), max z, entmax_α(z)) for a score tile.

    Only `x = (α−1)·(z − max z)` stays live through the threshold loop; the softmax numerators are
    recomputed from it afterwards (`exp(x/(α−1))`, bit-identical: the factors are powers of two),
    which keeps one fewer score tile in registers.
    """
    row_max = tl.maximum(tl.max(z, 1), _FLOAT32_MIN)
    if SPARSEMAX:
        x = z - row_max[:, None]
    else:
        x = (z - row_max[:, None]) * 0.5
    row_sum = tl.maximum(tl.sum(tl.exp(x) if SPARSEMAX else tl.exp(x * 2.0), 1), 1.0)
    tau = _entmax_threshold(x, BLOCK_M, SPARSEMAX)
    gap = tl.maximum(x - tau[:, None], 0.0)
    if SPARSEMAX:
        return tl.exp(x), row_sum, row_max, gap
    return tl.exp(x * 2.0), row_sum, row_max, gap * gap


@triton.jit
def _cross_attention_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    m_ptr,
    o_ptr,
    pladis_scale,
    scale,
    stride_qb,
    stride_qh,
    stride_qn,
    stride_qd,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_kd,
    stride_vb,
    stride_vh,
    stride_vn,
    stride_vd,
    stride_mb,
    stride_mh,
    stride_mn,
    stride_mk,
    stride_ob,
    stride_oh,
    stride_on,
    stride_od,
    H,
    N,
    L,
    D,
    DV,
    HAS_MASK: tl.constexpr,
    SPARSEMAX: tl.constexpr,
    DOT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DK: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    BLOCK_DVK: tl.constexpr,
):
    pid_bh = tl.program_id(1)
    b, h = pid_bh // H, pid_bh % H
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    row_ok, col_ok = rows < N, cols < L
    z = _row_scores(
        q_ptr + b * stride_qb + h * stride_qh,
        k_ptr + b * stride_kb + h * stride_kh,
        m_ptr + b * stride_mb + h * stride_mh,
        rows,
        cols,
        row_ok,
        col_ok,
        scale,
        stride_qn,
        stride_qd,
        stride_kn,
        stride_kd,
        stride_mn,
        stride_mk,
        D,
        HAS_MASK,
        BLOCK_M,
        BLOCK_N,
        BLOCK_D,
        BLOCK_DK,
        DOT,
    )
    dense, row_sum, _, sparse = _dense_and_sparse(z, BLOCK_M, SPARSEMAX)
    w = sparse * pladis_scale + dense * ((1.0 - pladis_scale) / row_sum)[:, None]
    _weighted_values(
        w,
        v_ptr + b * stride_vb + h * stride_vh,
        o_ptr + b * stride_ob + h * stride_oh,
        rows,
        cols,
        row_ok,
        col_ok,
        stride_vn,
        stride_vd,
        stride_on,
        stride_od,
        DV,
        False,
        DOT,
        BLOCK_N,
        BLOCK_DV,
        BLOCK_DVK,
    )


@triton.jit
def _text_block_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    m_ptr,
    o_ptr,
    r_ptr,
    pladis_scale,
    scale,
    stride_qb,
    stride_qh,
    stride_qn,
    stride_qd,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_kd,
    stride_vb,
    stride_vh,
    stride_vn,
    stride_vd,
    stride_mb,
    stride_mh,
    stride_mn,
    stride_mk,
    stride_ob,
    stride_oh,
    stride_on,
    stride_od,
    stride_rb,
    stride_rh,
    stride_rn,
    H,
    ROW0,
    N,
    L,
    D,
    DV,
    HAS_MASK: tl.constexpr,
    SPARSEMAX: tl.constexpr,
    DOT: tl.constexpr,
    ROW_IS_LSE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DK: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    BLOCK_DVK: tl.constexpr,
):
    # N image rows from joint row ROW0 (q, o, r and m rows), L text keys (k, v start at the first).
    pid_bh = tl.program_id(1)
    b, h = pid_bh // H, pid_bh % H
    local = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rows = ROW0 + local
    cols = tl.arange(0, BLOCK_N)
    row_ok, col_ok = local < N, cols < L
    z = _row_scores(
        q_ptr + b * stride_qb + h * stride_qh,
        k_ptr + b * stride_kb + h * stride_kh,
        m_ptr + b * stride_mb + h * stride_mh,
        rows,
        cols,
        row_ok,
        col_ok,
        scale,
        stride_qn,
        stride_qd,
        stride_kn,
        stride_kd,
        stride_mn,
        stride_mk,
        D,
        HAS_MASK,
        BLOCK_M,
        BLOCK_N,
        BLOCK_D,
        BLOCK_DK,
        DOT,
    )
    dense, row_sum, row_max, sparse = _dense_and_sparse(z, BLOCK_M, SPARSEMAX)
    row_value = tl.load(r_ptr + b * stride_rb + h * stride_rh + rows * stride_rn, mask=row_ok, other=0.0)
    if ROW_IS_LSE:  # exp(z − lse) = e·exp(max − lse): the joint softmax on the text keys; m its sum
        factor = tl.exp(row_max - row_value.to(tl.float32))
    else:  # the text mass m itself
        factor = row_value.to(tl.float32) / row_sum
    mass = row_sum * factor
    w = pladis_scale * (sparse * mass[:, None] - dense * factor[:, None])
    _weighted_values(
        w,
        v_ptr + b * stride_vb + h * stride_vh,
        o_ptr + b * stride_ob + h * stride_oh,
        rows,
        cols,
        row_ok,
        col_ok,
        stride_vn,
        stride_vd,
        stride_on,
        stride_od,
        DV,
        True,
        DOT,
        BLOCK_N,
        BLOCK_DV,
        BLOCK_DVK,
    )


def _dot_kind(dtype: torch.dtype) -> int:
    if dtype == torch.float32:
        return _DOT_IEEE.value
    return _DOT_WIDENED.value if interpreting() and dtype == torch.bfloat16 else _DOT_HALF.value


def _pow2(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


def _launch_config(keys: int, head_dim: int, value_dim: int) -> dict:
    """Tile sizes, chosen from ptxas' register reports for sm_80/sm_90 (`scripts/compile_kernels.py`):
    8 warps, 32 query rows for ≤ 128 keys (no spill), 16 for longer rows (the least spill measured),
    and K/V slices of ≤ 16K elements for the products."""
    block_n = _pow2(keys)
    block_d, block_dv = _pow2(head_dim), _pow2(value_dim)
    slice_dims = max(16, 16384 // block_n)
    return dict(
        BLOCK_M=32 if block_n <= 128 else 16,
        BLOCK_N=block_n,
        BLOCK_D=block_d,
        BLOCK_DK=min(block_d, slice_dims),
        BLOCK_DV=block_dv,
        BLOCK_DVK=min(block_dv, slice_dims),
        num_warps=8,
    )


def _strides4(tensor: torch.Tensor | None, shape: tuple[int, int, int, int]) -> tuple[int, ...]:
    """Strides of `tensor` broadcast to (B, H, rows, cols) (zeros where it broadcasts; zeros if None)."""
    if tensor is None:
        return (0, 0, 0, 0)
    return tensor.expand(shape).stride()


def _as_4d(mask: torch.Tensor | None) -> torch.Tensor | None:
    if mask is None:
        return None
    while mask.dim() < 4:
        mask = mask.unsqueeze(0)
    return mask


def triton_pladis_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    pladis_scale: float,
    pladis_alpha: float,
    mask: torch.Tensor | None,
    scale: float,
) -> torch.Tensor:
    """The cross-attention rule on (B, H, N, D) tensors in one launch; the result has `query`'s dtype
    and (B, N, H, D) memory (as SDPA's), so merging heads afterwards is a view."""
    batch, heads, rows, head_dim = query.shape
    keys, value_dim = key.shape[-2], value.shape[-1]
    key, value = key.expand(batch, heads, keys, head_dim), value.expand(batch, heads, keys, value_dim)
    output = query.new_empty((batch, rows, heads, value_dim)).transpose(1, 2)
    mask = _as_4d(mask)
    config = _launch_config(keys, head_dim, value_dim)
    grid = (triton.cdiv(rows, config["BLOCK_M"]), batch * heads)
    _cross_attention_kernel[grid](
        query,
        key,
        value,
        query if mask is None else mask,
        output,
        float(pladis_scale),
        float(scale),
        *query.stride(),
        *key.stride(),
        *value.stride(),
        *_strides4(mask, (batch, heads, rows, keys)),
        *output.stride(),
        heads,
        rows,
        keys,
        head_dim,
        value_dim,
        HAS_MASK=mask is not None,
        SPARSEMAX=pladis_alpha == 2.0,
        DOT=_dot_kind(query.dtype),
        **config,
    )
    return output


def triton_text_block_correction_(
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
    """Add the text-block correction `m·λ·(entmax_α(z_txt) − softmax(z_txt))·V_txt` to the image rows
    of the dense `output` in one launch. `mask` holds the text columns (rows over the joint queries);
    the row value is the dense log-sum-exp (`log_normaliser`, (B, H, N)) or the text mass (`text_mass`)."""
    batch, heads, joint, head_dim = query.shape
    keys, value_dim = text.stop - text.start, value.shape[-1]
    rows = image.stop - image.start
    key_text = key[..., text, :].expand(batch, heads, keys, head_dim)
    value_text = value[..., text, :].expand(batch, heads, keys, value_dim)
    row_values = (log_normaliser if log_normaliser is not None else text_mass).expand(batch, heads, joint)
    mask = _as_4d(mask)
    config = _launch_config(keys, head_dim, value_dim)
    grid = (triton.cdiv(rows, config["BLOCK_M"]), batch * heads)
    _text_block_kernel[grid](
        query,
        key_text,
        value_text,
        query if mask is None else mask,
        output,
        row_values,
        float(pladis_scale),
        float(scale),
        *query.stride(),
        *key_text.stride(),
        *value_text.stride(),
        *_strides4(mask, (batch, heads, joint, keys)),
        *output.stride(),
        *row_values.stride(),
        heads,
        image.start,
        rows,
        keys,
        head_dim,
        value_dim,
        HAS_MASK=mask is not None,
        SPARSEMAX=pladis_alpha == 2.0,
        DOT=_dot_kind(query.dtype),
        ROW_IS_LSE=log_normaliser is not None,
        **config,
    )
    return output
