"""Triton kernels for both PLADIS rules: one launch per call, no host sync, each score computed on chip.

Each program takes `BLOCK_M` query rows of one (batch, head) and all keys (≤ 512, padded to a power
of two): scores `QKᵀ` with float32 accumulation, softmax numerators, the exact α-entmax threshold
(`sparse_maps`' pass solver, looping on the chip: no sort, no host sync), the blend, and `A·V`, all
without leaving the chip. Inputs are read through their strides (the processors' (B, N, H, D)
memory as is), in float16, bfloat16 or float32; outputs are written in the input dtype.

Rows of ≤ 128 keys (SDXL's 77) stay in registers from the product to the end, 64 query rows per
program of one warpgroup. Longer rows (FLUX's 512 text keys) go by blocks of 128 keys whose scores
the tensor cores recompute at every threshold pass, 128 query rows per program (64 before sm_90):
no program holds more than one block of scores, so nothing spills, and K/V are read per 128 rows.
The tile sizes come from the SASS instruction model of `scripts/dev/compile_kernels.py`
(`_launch_config`; the numbers are in docs/PERFORMANCE.md).

- `triton_pladis_attention`: the cross-attention rule, `(softmax + λ·(entmax − softmax))·V`.
- `triton_text_block_correction_`: the joint text-block rule's correction, added in place to the
  image rows of the dense attention output, with the text mass taken from the dense attention's
  log-sum-exp (or given, where no fused op returned one).

Developed and tested on CPU with Triton's interpreter (`TRITON_INTERPRET=1`); there `tl.dot` is
exact float32, on a GPU float32 inputs use `input_precision="ieee"` for the same result, and half
inputs use half MMAs with float32 accumulation (the weights rounded to the value dtype for `A·V`, as
flash attention rounds its softmax weights; bfloat16 spelled out on the bits in the interpreter,
`tests/attention/kernels/test_gpu_arithmetic.py`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .kernel_calls import CrossAttentionCall, TextBlockCall
from .masks import four_dims
from .table import interpreting

_FLOAT32_MIN = tl.constexpr(-3.4028234663852886e38)  # jit code reads only constexpr globals
_LOG2E = tl.constexpr(1.4426950408889634)
# The pass solver's constants, as in `sparse_maps` (τ ∈ [−1, 0): 1e-6 is ~16 float32 ulps).
_THRESHOLD_TOL = tl.constexpr(1e-6)
# How the two products are computed: float32 inputs exactly ("ieee"); half inputs on half MMAs with
# float32 accumulation, the weights rounded to V's dtype before `A·V` (as flash attention rounds its
# softmax weights). Triton's interpreter cannot run bfloat16 dots and truncates float32 → bfloat16,
# so there bfloat16 takes `_DOT_BF16_EMULATED`: the same arithmetic spelled out — operands widened
# to float32 (bfloat16 products are exact in float32) and every rounding to bfloat16 done to nearest
# on the bits (`_round_bf16`).
_DOT_IEEE = tl.constexpr(0)
_DOT_HALF = tl.constexpr(1)
_DOT_BF16_EMULATED = tl.constexpr(2)
_MAX_PASSES = tl.constexpr(50)
_SAFE_PASSES = tl.constexpr(8)


@triton.jit
def _round_bf16(x):
    """float32 → the nearest bfloat16 value (ties to even), kept in float32: what the GPU's conversion
    gives (Triton's interpreter truncates instead)."""
    bits = x.to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _to_output(x, dtype: tl.constexpr, DOT: tl.constexpr):
    """A float32 tile in the output dtype, rounded to nearest (on the bits where the interpreter would truncate)."""
    if DOT == _DOT_BF16_EMULATED:
        x = _round_bf16(x)
    return x.to(dtype)


@triton.jit
def _product(a, b, acc, DOT: tl.constexpr):
    """`acc + a·b` with float32 accumulation: `a` float32 or the input dtype, `b` the input dtype."""
    if DOT == _DOT_IEEE:
        return tl.dot(a, b, acc, input_precision="ieee")
    if DOT == _DOT_HALF:  # half MMAs: `a` rounded to `b`'s dtype first (the weights of `A·V`)
        return tl.dot(a.to(b.dtype), b, acc)
    return tl.dot(_round_bf16(a.to(tl.float32)), b.to(tl.float32), acc, input_precision="ieee")


@triton.jit
def _key_block_x(
    q,
    keys,
    block,
    shift,
    factor: tl.constexpr,
    HAS_MASK: tl.constexpr,
    EVEN_KEYS: tl.constexpr,
    BLOCK_NK: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DOT: tl.constexpr,
):
    """`factor·(scale·QKᵀ + mask) − shift` (shift per row) for the tile's rows × key block `block`
    (BLOCK_NK keys), float32, −inf on padded keys; `q` is the tile's (BLOCK_M, BLOCK_D) queries and
    `keys` = (K, mask, rows, rows in range, key count, head dim, scale, K and mask strides)."""
    k_ptr, m_ptr, rows, row_ok, L, D, scale, stride_kn, stride_kd, stride_mn, stride_mk = keys
    cols = block * BLOCK_NK + tl.arange(0, BLOCK_NK)
    dims = tl.arange(0, BLOCK_D)
    keys = k_ptr + cols[None, :] * stride_kn + dims[:, None] * stride_kd
    if EVEN_KEYS:
        k = tl.load(keys, mask=(dims < D)[:, None], other=0.0)
    else:
        k = tl.load(keys, mask=(cols < L)[None, :] & (dims < D)[:, None], other=0.0)
    if HAS_MASK:  # the mask in units of QKᵀ enters as the product's accumulator: the tensor cores add it
        acc = tl.load(
            m_ptr + rows[:, None] * stride_mn + cols[None, :] * stride_mk,
            mask=row_ok[:, None] & (cols < L)[None, :],
            other=0.0,
        ).to(tl.float32) * (1.0 / scale)
    else:
        acc = tl.zeros((q.shape[0], BLOCK_NK), dtype=tl.float32)
    x = _product(q, k, acc, DOT) * (scale * factor) - shift[:, None]
    if EVEN_KEYS:
        return x
    return tl.where((cols < L)[None, :], x, float("-inf"))


@triton.jit
def _entmax_threshold(x, BLOCK_M: tl.constexpr, SPARSEMAX: tl.constexpr):
    """τ per row of a resident tile `x = (α−1)·(z − max z)` (−inf on masked and padded keys)."""
    tau = tl.full([BLOCK_M], -1.0, tl.float32)
    state = _pass_state(BLOCK_M)
    passes = 0
    while (passes < _MAX_PASSES) & (tl.min(state[0], 0) == 0):
        sums = _pass_sums(x - tau[:, None])
        tau, state = _pass_update(tau, state, sums, passes, SPARSEMAX)
        passes += 1
    return tau


@triton.jit
def _pass_state(BLOCK_M: tl.constexpr):
    """(done, last support size, last side) per row, before the first pass."""
    return (
        tl.zeros([BLOCK_M], dtype=tl.int32),
        tl.full([BLOCK_M], -1.0, tl.float32),
        tl.zeros([BLOCK_M], dtype=tl.int32),
    )


@triton.jit
def _pass_sums(x_minus_tau):
    """(|S|, Σ_S (x − τ), Σ_S (x − τ)²) per row over the support S = {x > τ} (three sums: the same SASS
    as one reduction of a triple, and no Python-level combine function in Triton's interpreter)."""
    gap = tl.maximum(x_minus_tau, 0.0)
    return tl.sum((gap > 0.0).to(tl.float32), 1), tl.sum(gap, 1), tl.sum(gap * gap, 1)


@triton.jit
def _pass_update(tau, state, sums, passes, SPARSEMAX: tl.constexpr):
    """One pass of `sparse_maps.entmax_threshold` from a row's support sums: α = 2 is Michelot's
    support iteration (monotone from τ = −1, exact once the support stops shrinking); α = 1.5 jumps
    to the root of the quadratic on the support at τ and is done once two passes on opposite sides
    of the root see supports of the same size (that root is then exact), finishing with monotone
    Newton steps after `_SAFE_PASSES`."""
    done, last_count, last_below = state
    count, gap_sum, gap_square = sums
    empty = count == 0.0  # a row with no finite score: nothing to solve, its map is 0
    count = tl.maximum(count, 1.0)  # (and no division by zero on such rows)
    gap_sum = tl.maximum(gap_sum, 1e-30)
    if SPARSEMAX:
        step = tl.fdiv(gap_sum - 1.0, count)
        settled = tl.abs(step) <= _THRESHOLD_TOL
        below = last_below
    else:
        excess = gap_square - 1.0
        below = (excess >= 0.0).to(tl.int32)
        discriminant = tl.maximum(gap_sum * gap_sum - count * excess, 0.0)
        root_step = tl.fdiv(excess, gap_sum + tl.sqrt(discriminant))
        safe = passes >= _SAFE_PASSES
        step = tl.where(safe & (below != 0), tl.fdiv(excess, 2.0 * gap_sum), root_step)
        settled = tl.abs(step) <= _THRESHOLD_TOL
        settled = settled | ((passes < _SAFE_PASSES) & (count == last_count) & (below != last_below))
    step = tl.where((done != 0) | empty | (step != step), 0.0, step)
    return tau + step, (done | (settled | empty).to(tl.int32), count, below)


@triton.jit
def _dense(x, SPARSEMAX: tl.constexpr):
    """exp(z − max z) from x = (α−1)·(z − max z) (bit-identical: the factors are powers of two)."""
    if SPARSEMAX:
        return tl.exp2(x * _LOG2E)
    return tl.exp2(x * (2.0 * _LOG2E))


@triton.jit
def _sparse(x, tau, SPARSEMAX: tl.constexpr):
    """entmax_α(z) = [x − τ]_+^{1/(α−1)}."""
    gap = tl.maximum(x - tau[:, None], 0.0)
    if SPARSEMAX:
        return gap
    return gap * gap


@triton.jit
def _pladis_rows(
    q_ptr,
    k_ptr,
    v_ptr,
    m_ptr,
    o_ptr,
    r_ptr,
    rows,
    row_ok,
    pladis_scale,
    scale,
    stride_qn,
    stride_qd,
    stride_kn,
    stride_kd,
    stride_vn,
    stride_vd,
    stride_mn,
    stride_mk,
    stride_on,
    stride_od,
    stride_rn,
    L,
    D,
    DV,
    HAS_MASK: tl.constexpr,
    SPARSEMAX: tl.constexpr,
    DOT: tl.constexpr,
    ROW_VALUE: tl.constexpr,
    EVEN_KEYS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_NK: tl.constexpr,
    KEY_BLOCKS: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr,
):
    """Both rules on one tile of query rows: `Σ_k w·V` written (cross-attention, `ROW_VALUE` 0) or
    added to the output (text block: `ROW_VALUE` 1 = the row's log-sum-exp, 2 = its text mass).

    The keys come in `KEY_BLOCKS` blocks of `BLOCK_NK`. One block: its scores stay in registers
    from the product to the end. Several (long text rows): each block's scores are recomputed from
    Q (in registers) and K by the tensor cores at every pass, so a program of many query rows never
    holds more than one block of scores and reads K and V once per pass instead of once per 16 rows.
    """
    dims = tl.arange(0, BLOCK_D)
    q = tl.load(
        q_ptr + rows[:, None] * stride_qn + dims[None, :] * stride_qd,
        mask=row_ok[:, None] & (dims < D)[None, :],
        other=0.0,
    )
    keys = (k_ptr, m_ptr, rows, row_ok, L, D, scale, stride_kn, stride_kd, stride_mn, stride_mk)
    # x = (α−1)·(z − max z), from the scores or their key blocks (`_key_block_x`'s shift and factor)
    factor: tl.constexpr = 1.0 if SPARSEMAX else 0.5
    zero = tl.zeros([BLOCK_M], dtype=tl.float32)
    if KEY_BLOCKS == 1:
        z = _key_block_x(q, keys, 0, zero, 1.0, HAS_MASK, EVEN_KEYS, BLOCK_NK, BLOCK_D, DOT)
        row_max = tl.maximum(tl.max(z, 1), _FLOAT32_MIN)
        x = (z - row_max[:, None]) * factor
        row_sum = tl.sum(_dense(x, SPARSEMAX), 1)
        tau = _entmax_threshold(x, BLOCK_M, SPARSEMAX)
    else:
        # the row max and the softmax denominator Σ exp(z − max z) in one sweep, rescaled as the max grows
        row_max = tl.full([BLOCK_M], _FLOAT32_MIN, tl.float32)
        row_sum = zero
        for block in range(KEY_BLOCKS):
            z = _key_block_x(q, keys, block, zero, 1.0, HAS_MASK, EVEN_KEYS, BLOCK_NK, BLOCK_D, DOT)
            new_max = tl.maximum(row_max, tl.max(z, 1))
            rescale = tl.exp2(tl.maximum(row_max - new_max, -200.0) * _LOG2E)  # (no overflow from the initial max)
            row_sum = row_sum * rescale + tl.sum(tl.exp2((z - new_max[:, None]) * _LOG2E), 1)
            row_max = new_max
        shift = row_max * factor
        tau = tl.full([BLOCK_M], -1.0, tl.float32)
        state = _pass_state(BLOCK_M)
        passes = 0
        while (passes < _MAX_PASSES) & (tl.min(state[0], 0) == 0):
            count, gap_sum, gap_square = zero, zero, zero
            for block in range(KEY_BLOCKS):
                x_minus_tau = _key_block_x(
                    q, keys, block, shift + tau, factor, HAS_MASK, EVEN_KEYS, BLOCK_NK, BLOCK_D, DOT
                )
                block_count, block_sum, block_square = _pass_sums(x_minus_tau)
                count, gap_sum, gap_square = count + block_count, gap_sum + block_sum, gap_square + block_square
            tau, state = _pass_update(tau, state, (count, gap_sum, gap_square), passes, SPARSEMAX)
            passes += 1
    row_sum = tl.maximum(row_sum, 1.0)  # ≥ 1 on a row with a finite score; 0-rows: their maps stay 0
    # The weights w = sparse_weight·entmax + dense_weight·exp(z − max z), per rule.
    if ROW_VALUE == 0:  # (1 − λ)·softmax + λ·entmax
        sparse_weight = tl.full([BLOCK_M], 1.0, tl.float32) * pladis_scale
        dense_weight = (1.0 - pladis_scale) / row_sum
    else:  # λ·(m·entmax − m·softmax), m the row's dense mass on the text keys
        row_value = tl.load(r_ptr + rows * stride_rn, mask=row_ok, other=0.0).to(tl.float32)
        if ROW_VALUE == 1:  # exp(z − lse) = exp(z − max)·exp(max − lse): the joint softmax on the text keys
            joint_weight = tl.exp(row_max - row_value)
        else:  # the text mass m itself
            joint_weight = row_value / row_sum
        sparse_weight = pladis_scale * row_sum * joint_weight
        dense_weight = -pladis_scale * joint_weight
    out = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    values = tl.arange(0, BLOCK_DV)
    for block in range(KEY_BLOCKS):
        if KEY_BLOCKS > 1:
            x = _key_block_x(q, keys, block, shift, factor, HAS_MASK, EVEN_KEYS, BLOCK_NK, BLOCK_D, DOT)
        w = _sparse(x, tau, SPARSEMAX) * sparse_weight[:, None] + _dense(x, SPARSEMAX) * dense_weight[:, None]
        cols = block * BLOCK_NK + tl.arange(0, BLOCK_NK)
        v = tl.load(
            v_ptr + cols[:, None] * stride_vn + values[None, :] * stride_vd,
            mask=(cols < L)[:, None] & (values < DV)[None, :],
            other=0.0,
        )
        out = _product(w, v, out, DOT)
    pointers = o_ptr + rows[:, None] * stride_on + values[None, :] * stride_od
    store_ok = row_ok[:, None] & (values < DV)[None, :]
    if ROW_VALUE != 0:
        out += tl.load(pointers, mask=store_ok, other=0.0).to(tl.float32)
    tl.store(pointers, _to_output(out, o_ptr.dtype.element_ty, DOT), mask=store_ok)


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
    EVEN_KEYS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_NK: tl.constexpr,
    KEY_BLOCKS: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr,
):
    pid_bh = tl.program_id(1)
    b, h = pid_bh // H, pid_bh % H
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    _pladis_rows(
        q_ptr + b * stride_qb + h * stride_qh,
        k_ptr + b * stride_kb + h * stride_kh,
        v_ptr + b * stride_vb + h * stride_vh,
        m_ptr + b * stride_mb + h * stride_mh,
        o_ptr + b * stride_ob + h * stride_oh,
        o_ptr,
        rows,
        rows < N,
        pladis_scale,
        scale,
        stride_qn,
        stride_qd,
        stride_kn,
        stride_kd,
        stride_vn,
        stride_vd,
        stride_mn,
        stride_mk,
        stride_on,
        stride_od,
        0,
        L,
        D,
        DV,
        HAS_MASK,
        SPARSEMAX,
        DOT,
        0,
        EVEN_KEYS,
        BLOCK_M,
        BLOCK_NK,
        KEY_BLOCKS,
        BLOCK_D,
        BLOCK_DV,
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
    EVEN_KEYS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_NK: tl.constexpr,
    KEY_BLOCKS: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr,
):
    # N image rows from joint row ROW0 (q, o, r and m rows), L text keys (k, v start at the first).
    pid_bh = tl.program_id(1)
    b, h = pid_bh // H, pid_bh % H
    local = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    _pladis_rows(
        q_ptr + b * stride_qb + h * stride_qh,
        k_ptr + b * stride_kb + h * stride_kh,
        v_ptr + b * stride_vb + h * stride_vh,
        m_ptr + b * stride_mb + h * stride_mh,
        o_ptr + b * stride_ob + h * stride_oh,
        r_ptr + b * stride_rb + h * stride_rh,
        ROW0 + local,
        local < N,
        pladis_scale,
        scale,
        stride_qn,
        stride_qd,
        stride_kn,
        stride_kd,
        stride_vn,
        stride_vd,
        stride_mn,
        stride_mk,
        stride_on,
        stride_od,
        stride_rn,
        L,
        D,
        DV,
        HAS_MASK,
        SPARSEMAX,
        DOT,
        1 if ROW_IS_LSE else 2,
        EVEN_KEYS,
        BLOCK_M,
        BLOCK_NK,
        KEY_BLOCKS,
        BLOCK_D,
        BLOCK_DV,
    )


def _dot_kind(dtype: torch.dtype) -> int:
    if dtype == torch.float32:
        return _DOT_IEEE.value
    return _DOT_BF16_EMULATED.value if interpreting() and dtype == torch.bfloat16 else _DOT_HALF.value


def _pow2(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


def _launch_config(
    keys: int,
    head_dim: int,
    value_dim: int,
    capability: tuple[int, int] = (9, 0),
    rows: int | None = None,
    warps: int | None = None,
    key_block: int = 128,
) -> dict:
    """Tile sizes per key count and card, chosen by the instruction model of `scripts/dev/compile_kernels.py`
    (SASS counted for sm_80 and sm_90, see docs/PERFORMANCE.md): rows of ≤ 128 keys stay in registers,
    in programs of 64 query rows × 4 warps (one warpgroup: every row reduction stays inside a warp);
    longer rows go by blocks of 128 keys recomputed at every pass (one block of scores per thread at
    a time: no spill), in programs of 8 warps and 128 query rows from sm_90 (two warpgroups), 64
    before it. `rows`, `warps` and `key_block` override the choice (the script's candidates)."""
    block_n = _pow2(keys)
    block_nk = min(block_n, key_block)
    resident = block_nk == block_n
    return dict(
        BLOCK_M=rows or (64 if resident or capability < (9, 0) else 128),
        BLOCK_NK=block_nk,
        KEY_BLOCKS=block_n // block_nk,
        EVEN_KEYS=keys == block_n,
        BLOCK_D=_pow2(head_dim),
        BLOCK_DV=_pow2(value_dim),
        num_warps=warps or (4 if resident else 8),
        num_stages=1,
    )


def _capability(tensor: torch.Tensor) -> tuple[int, int]:
    """The compute capability the kernel compiles for (sm_90's choices in Triton's CPU interpreter)."""
    return torch.cuda.get_device_capability(tensor.device) if tensor.is_cuda else (9, 0)


def _strides4(tensor: torch.Tensor | None, shape: tuple[int, int, int, int]) -> tuple[int, ...]:
    """Strides of `tensor` broadcast to (B, H, rows, cols) (zeros where it broadcasts; zeros if None)."""
    if tensor is None:
        return (0, 0, 0, 0)
    return tensor.expand(shape).stride()


def triton_pladis_attention(call: CrossAttentionCall) -> torch.Tensor:
    """The cross-attention rule on (B, H, N, D) tensors in one launch; the result has `query`'s dtype
    and (B, N, H, D) memory (as SDPA's), so merging heads afterwards is a view."""
    query, key, value, settings, mask, scale = call.query, call.key, call.value, call.settings, call.mask, call.scale
    batch, heads, rows, head_dim = query.shape
    keys, value_dim = key.shape[-2], value.shape[-1]
    key, value = key.expand(batch, heads, keys, head_dim), value.expand(batch, heads, keys, value_dim)
    output = query.new_empty((batch, rows, heads, value_dim)).transpose(1, 2)
    mask = four_dims(mask)
    config = _launch_config(keys, head_dim, value_dim, _capability(query))
    grid = (triton.cdiv(rows, config["BLOCK_M"]), batch * heads)
    _cross_attention_kernel[grid](
        query,
        key,
        value,
        query if mask is None else mask,
        output,
        float(settings.pladis_scale),
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
        SPARSEMAX=settings.pladis_alpha == 2.0,
        DOT=_dot_kind(query.dtype),
        **config,
    )
    return output


def triton_text_block_correction_(call: TextBlockCall) -> torch.Tensor:
    """Add the text-block correction `m·λ·(entmax_α(z_txt) − softmax(z_txt))·V_txt` to the image rows
    of the dense `call.output` in one launch. `mask` holds the text columns (rows over the joint queries);
    the row value is the dense log-sum-exp (`log_normaliser`, (B, H, N)) or the text mass (`text_mass`)."""
    output, query, key, value, text, image = call.output, call.query, call.key, call.value, call.text, call.image
    settings, mask, scale, log_normaliser = call.settings, call.mask, call.scale, call.log_normaliser
    text_mass = call.text_mass
    batch, heads, joint, head_dim = query.shape
    keys, value_dim = text.stop - text.start, value.shape[-1]
    rows = image.stop - image.start
    key_text = key[..., text, :].expand(batch, heads, keys, head_dim)
    value_text = value[..., text, :].expand(batch, heads, keys, value_dim)
    row_values = (log_normaliser if log_normaliser is not None else text_mass).expand(batch, heads, joint)
    mask = four_dims(mask)
    config = _launch_config(keys, head_dim, value_dim, _capability(query))
    grid = (triton.cdiv(rows, config["BLOCK_M"]), batch * heads)
    _text_block_kernel[grid](
        query,
        key_text,
        value_text,
        query if mask is None else mask,
        output,
        row_values,
        float(settings.pladis_scale),
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
        SPARSEMAX=settings.pladis_alpha == 2.0,
        DOT=_dot_kind(query.dtype),
        ROW_IS_LSE=log_normaliser is not None,
        **config,
    )
    return output
