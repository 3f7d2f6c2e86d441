"""Which fused kernel `F.scaled_dot_product_attention` runs on CUDA tensors, decided as torch decides it.

The joint text-block rule needs the dense attention's log-sum-exp, which only the fused ops return, and
it must keep the dense part the stock one on every card: flash attention needs sm80 or newer, and on
sm90/sm100 this torch prefers cuDNN attention. `stock_sdpa_backend` mirrors torch 2.15's
`select_sdp_backend` (`aten/src/ATen/native/transformers/cuda/sdp_utils.cpp`) for the calls PLADIS makes
(dense, non-causal, no dropout, no gradient) from `torch.cuda.get_device_capability` and the
`torch.backends` switches only: no device query, no sync, so fake CUDA tensors test it per card.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch

FLASH, EFFICIENT, CUDNN, MATH = "flash", "efficient", "cudnn", "math"
# torch's SDPBackend numbers (`torch._C._get_sdp_priority_order()`), and its default order.
_BACKEND_OF_NUMBER = {0: MATH, 1: FLASH, 2: EFFICIENT, 3: CUDNN}
_DEFAULT_ORDER = (FLASH, EFFICIENT, MATH, CUDNN)
_CUDNN_FIRST = (CUDNN, FLASH, EFFICIENT, MATH)
_HALF = (torch.float16, torch.bfloat16)
_FUSED_CARDS = ((8, 0), (12, 1))  # flash and cuDNN: sm80 … sm121
_EFFICIENT_CARDS = ((5, 0), (12, 1))
_TRUE = {"1", "ON", "YES", "TRUE", "Y"}  # c10::utils::check_env's spellings of true


class _Settings(NamedTuple):
    """What torch's choice reads besides the tensors: the card and torch's global SDPA switches."""

    capability: tuple[int, int]
    order: tuple[str, ...]  # backends in the order torch tries them
    enabled: tuple[str, ...]  # the `torch.backends.cuda.enable_*_sdp` switches that are on
    strict_determinism: bool  # `torch.use_deterministic_algorithms(True)` without warn_only
    cudnn_version: int


def _cudnn_version() -> int:
    return (torch.backends.cudnn.version() or 0) if torch.backends.cudnn.is_available() else 0


def prefers_cudnn_attention(capability: tuple[int, int]) -> bool:
    """torch's `check_prefer_cudnn_attention`: cuDNN attention goes first on sm90/sm100 with cuDNN newer
    than 9.15 (CUDA < 13 builds: sm9.0/9.3/10.0/10.3 only), unless `TORCH_CUDNN_SDPA_DEPRIORITIZED` is set."""
    if os.environ.get("TORCH_CUDNN_SDPA_DEPRIORITIZED", "").strip().upper() in _TRUE:
        return False
    major, minor = capability
    if _cudnn_version() <= 91500 or major not in (9, 10):
        return False
    cuda_major = int((torch.version.cuda or "0").split(".")[0])
    return cuda_major >= 13 or minor in (0, 3)


@torch.compiler.assume_constant_result  # one read per compiled graph, no graph break on torch._C calls
def _sdpa_settings(device: torch.device) -> _Settings:
    capability = tuple(torch.cuda.get_device_capability(device))
    # torch's global order (`sdpa_kernel(..., set_priority=True)` changes it), which torch itself puts
    # cuDNN-first on its first CUDA call where it prefers cuDNN.
    numbers = getattr(torch._C, "_get_sdp_priority_order", lambda: ())()
    order = tuple(_BACKEND_OF_NUMBER[n] for n in numbers if n in _BACKEND_OF_NUMBER) or _DEFAULT_ORDER
    if order == _DEFAULT_ORDER and prefers_cudnn_attention(capability):
        order = _CUDNN_FIRST
    switches = {
        FLASH: torch.backends.cuda.flash_sdp_enabled(),
        EFFICIENT: torch.backends.cuda.mem_efficient_sdp_enabled(),
        CUDNN: torch.backends.cuda.cudnn_sdp_enabled(),
        MATH: torch.backends.cuda.math_sdp_enabled(),
    }
    strict = torch.are_deterministic_algorithms_enabled() and not torch.is_deterministic_algorithms_warn_only_enabled()
    enabled = tuple(backend for backend, on in switches.items() if on)
    return _Settings(capability, order, enabled, strict, _cudnn_version())


def _on(capability: tuple[int, int], cards: tuple[tuple[int, int], tuple[int, int]]) -> bool:
    return cards[0] <= tuple(capability) <= cards[1]


def _cudnn_head_dim_limit(settings: _Settings) -> int:
    major, minor = settings.capability
    sm90_or_sm10x = (major == 9 and minor == 0) or major == 10
    return 256 if sm90_or_sm10x and settings.cudnn_version > 92200 and settings.capability != (10, 7) else 128


def _gemm_alignment(capability: tuple[int, int], half: bool) -> int:
    """torch's `minimum_gemm_alignment`: the head-dim multiple the memory-efficient kernel needs."""
    tensor_cores = capability[0] >= 8 or (capability[0] == 7 and half)
    alignment = 4 if capability[0] >= 8 else 1
    return max(alignment, 8 if half else 4) if tensor_cores else alignment


def _can_use(backend: str, query, key, value, attn_mask, settings: _Settings) -> bool:
    """torch's `can_use_<backend>` gates for dense (B, H, N, D) CUDA inputs (its mask-shape checks aside)."""
    if backend not in settings.enabled:
        return False
    if backend == MATH:
        return True
    tensors = (query, key, value)
    if any(t.dim() != 4 or t.shape[-2] == 0 for t in tensors):
        return False
    if not query.shape[:2] == key.shape[:2] == value.shape[:2]:
        return False  # (grouped-query attention aside: PLADIS never calls it)
    if any(t.stride(-1) != 1 and t.shape[-1] != 1 for t in tensors):
        return False
    capability = settings.capability
    query_dim, key_dim, value_dim = (t.shape[-1] for t in tensors)
    half = query.dtype in _HALF and key.dtype == value.dtype == query.dtype
    if backend == FLASH:
        return attn_mask is None and half and _on(capability, _FUSED_CARDS) and query_dim == key_dim == value_dim <= 256
    if backend == CUDNN:
        return (
            half
            and _on(capability, _FUSED_CARDS)
            and not settings.strict_determinism
            and query_dim == key_dim
            and max(query_dim, value_dim) <= _cudnn_head_dim_limit(settings)
            and query_dim % 8 == value_dim % 8 == 0
            and key.shape[-2] != 1
            and max(query.shape[:2]) <= 65535
        )
    dtypes = (torch.float16, torch.float32) + ((torch.bfloat16,) if capability[0] >= 8 else ())
    alignment = _gemm_alignment(capability, half)
    offsets_aligned = capability[0] < 8 or all(t.storage_offset() % alignment == 0 for t in tensors)
    return (  # the memory-efficient kernel
        _on(capability, _EFFICIENT_CARDS)
        and query.dtype in dtypes
        and key.dtype == value.dtype == query.dtype
        and query_dim == key_dim
        and query_dim % alignment == value_dim % alignment == 0
        and offsets_aligned
        and all(t.stride(-1) == 1 for t in tensors)
    )


def stock_sdpa_backend(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: torch.Tensor | None = None
) -> str:
    """`"cudnn"`, `"flash"`, `"efficient"` or `"math"`: the kernel `F.scaled_dot_product_attention` runs
    for these CUDA (B, H, N, D) tensors on their card — the first backend of torch's priority order
    whose gates pass (card range, dtype, mask, head dims, the `torch.backends.cuda.enable_*_sdp` switches)."""
    settings = _sdpa_settings(query.device)
    for backend in settings.order:
        if _can_use(backend, query, key, value, attn_mask, settings):
            return backend
    return MATH
