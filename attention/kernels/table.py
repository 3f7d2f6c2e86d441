"""Which implementation computes PLADIS attention: the `PLADIS_KERNEL` environment variable.

`auto` (default): the Triton kernels for CUDA tensors when Triton imports and the case is covered,
else the sync-free `torch` path on GPUs and the fast chunked path on CPU. `triton`: the Triton
kernels or a clear error (never a silent fallback). `torch`: the sync-free path on any device.
The variable is read on every call, so it can be changed between calls.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable
from typing import TypeVar

import torch

KERNEL_VARIABLE = "PLADIS_KERNEL"
KERNELS = ("auto", "triton", "torch")

_failed_triton: set[str] = set()  # rules whose Triton kernel failed to compile under `auto` (warned once)
T = TypeVar("T")


def requested_kernel() -> str:
    """`PLADIS_KERNEL` as set (default `auto`); any other value raises a `ValueError` naming it."""
    value = os.environ.get(KERNEL_VARIABLE, "auto").strip().lower() or "auto"
    if value not in KERNELS:
        raise ValueError(
            f"{KERNEL_VARIABLE} must be one of {', '.join(KERNELS)} (auto picks Triton on CUDA when it can), "
            f"got {os.environ[KERNEL_VARIABLE]!r}"
        )
    return value


@functools.cache
def triton_available() -> bool:
    """Whether Triton imports (checked once per process)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def interpreting() -> bool:
    """Whether Triton kernels run in Triton's CPU interpreter (`TRITON_INTERPRET=1`, tests)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def choose_kernel(rule: str, device: torch.device, uncovered: str | None) -> str:
    """`"triton"`, `"torch"` or `"chunked"` (the CPU path) for one call of `rule` on `device`.

    `uncovered` says why the Triton kernel cannot run this case (None when it can); an explicit
    `PLADIS_KERNEL=triton` then raises, naming the variable and the reason.
    """
    requested = requested_kernel()
    if torch.compiler.is_compiling():
        return "torch"  # a compiled graph traces the sync-free ops; a Triton launch would break it
    triton_device = device.type == "cuda" or (device.type == "cpu" and interpreting())
    if requested == "triton":
        reason = uncovered
        if reason is None and not triton_available():
            reason = "Triton is not installed"
        if reason is None and not triton_device:
            reason = f"tensors are on {device.type} (Triton needs CUDA, or TRITON_INTERPRET=1 on CPU)"
        if reason is not None:
            raise ValueError(
                f"{KERNEL_VARIABLE}=triton cannot run the PLADIS {rule} kernel here: {reason}; "
                f"use {KERNEL_VARIABLE}=auto or torch"
            )
        return "triton"
    if requested == "torch":
        return "torch"
    if device.type == "cuda":
        covered = uncovered is None and rule not in _failed_triton and triton_available()
        return "triton" if covered else "torch"
    return "chunked"


def triton_compile_errors() -> tuple[type[Exception], ...]:
    """The exceptions with which Triton says a kernel cannot be built for this GPU: a front-end
    compilation error (`CompilationError`), more shared memory or threads than the card has
    (`OutOfResources`), and `ptxas` failing (`PTXASError`) — the set Triton's own autotuner treats
    as "this configuration does not compile here"."""
    from triton.compiler.errors import CompilationError
    from triton.runtime.errors import OutOfResources, PTXASError

    return (CompilationError, OutOfResources, PTXASError)


def run_triton(rule: str, kernel: Callable[[], T], fallback: Callable[[], T]) -> T:
    """Run `kernel`; under `auto` a failure to compile it (`triton_compile_errors`) falls back to
    `fallback`, warning once per process and rule. Anything else — out of memory, a launch or
    runtime error — propagates, as does every error under an explicit `PLADIS_KERNEL=triton`."""
    if requested_kernel() == "triton":
        return kernel()
    try:
        return kernel()
    except triton_compile_errors() as error:
        _failed_triton.add(rule)
        warnings.warn(
            f"PLADIS: the Triton {rule} kernel does not compile for this GPU ({type(error).__name__}: {error}); "
            f"using the sync-free torch path from now on. Set {KERNEL_VARIABLE}=torch to silence this.",
            RuntimeWarning,
            stacklevel=3,
        )
        return fallback()


TRITON_MAX_KEYS = 512
_TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def triton_gap(query: torch.Tensor, keys: int, value_dim: int, alpha: float, mask: torch.Tensor | None) -> str | None:
    """Why the Triton kernels cannot run this case, or None when they can: (B, H, N, D) inputs in
    float16/bfloat16/float32, 1–512 keys, head dims ≤ 256, α = 1.5 or 2, masks of at most 4 dims."""
    if query.dim() != 4:
        return f"the kernels take (batch, heads, tokens, dim) inputs, got {query.dim()} dims"
    if query.dtype not in _TRITON_DTYPES:
        return f"dtype {query.dtype} (the kernels cover float16, bfloat16, float32)"
    if alpha not in (1.5, 2.0):
        return f"pladis_alpha={alpha} (the kernels cover 1.5 and 2)"
    if not 1 <= keys <= TRITON_MAX_KEYS:
        return f"{keys} keys (the kernels cover 1 to {TRITON_MAX_KEYS})"
    if max(query.shape[-1], value_dim) > 256:
        return f"head dim {max(query.shape[-1], value_dim)} (the kernels cover up to 256)"
    if mask is not None and mask.dim() > 4:
        return f"a {mask.dim()}-dim mask (the kernels cover up to 4)"
    return None
