"""Which implementation computes a PLADIS rule: the one table of kernels, and the one choice both seams make.

Each kernel is registered once in `KERNELS`, in order, with the functions computing the two rules and the rules
of where it runs: `takes_over` (the only kernel for a case: the reference formulation when a call asks for it,
the differentiable one when autograd records the call, the sync-free torch path inside `torch.compile`), `gap`
(why it cannot run a case it is asked for) and `automatic` (`auto` takes the first kernel it holds for).
`choose_kernel` takes the call's own choice (`PLADISSettings.kernel`, what the benchmark and tests set), else
the user's `PLADIS_KERNEL`, read on every call, so it can change between calls:

`auto` (default): the Triton kernels for CUDA tensors when Triton imports and the case is covered, else the
sync-free `torch` path on GPUs and the chunked path on CPU. `triton`: the Triton kernels or a clear error
(never a silent fallback). `torch`: the sync-free path on any device. Adding a kernel is adding a record here:
`tests/attention/kernels/test_kernel_choice.py` checks every record against the reference formulation through
both seams (and `tests/attention/kernels/test_kernel_paths.py` the fast ones on the hard inputs).
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..settings import PLADISSettings
from . import chunked, materialised, sync_free_attention
from .kernel_calls import CrossAttentionCall, TextBlockCall

KERNEL_VARIABLE = "PLADIS_KERNEL"
AUTO = "auto"
CROSS_ATTENTION, TEXT_BLOCK = "cross-attention", "text-block"  # the two rules (seams), as messages name them


@dataclass(frozen=True)
class KernelCase:
    """One call of a seam as the choice sees it: the rule, the query, how many keys and how wide a value the kernel
    reads, its additive mask over those keys, the call's settings, whether autograd records the call, and whether
    the sequence is sharded across ranks (context parallelism: the joint correction runs over gathered text)."""

    rule: str
    query: torch.Tensor
    keys: int
    value_dim: int
    mask: torch.Tensor | None
    settings: PLADISSettings
    autograd: bool = False
    sharded: bool = False


def _never(case: KernelCase) -> bool:
    return False


def _always(case: KernelCase) -> bool:
    return True


def _covers_every_case(case: KernelCase) -> str | None:
    return None


def _whole_sequences(case: KernelCase) -> str | None:
    """The materialised kernels compute the joint rule whole, which context-parallel shards do not hold."""
    if case.sharded and case.rule == TEXT_BLOCK:
        return "it computes whole joint sequences, not context-parallel shards"
    return None


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


def _triton_case_gap(case: KernelCase) -> str | None:
    reason = triton_gap(case.query, case.keys, case.value_dim, case.settings.pladis_alpha, case.mask)
    if reason is None and not triton_available():
        reason = "Triton is not installed"
    device = case.query.device
    if reason is None and not (device.type == "cuda" or (device.type == "cpu" and interpreting())):
        reason = f"tensors are on {device.type} (Triton needs CUDA, or TRITON_INTERPRET=1 on CPU)"
    return reason


_failed: set[tuple[str, str]] = set()  # (kernel, rule) that failed to compile under `auto` (warned once)


def _triton_automatic(case: KernelCase) -> bool:
    return case.query.device.type == "cuda" and ("triton", case.rule) not in _failed and _triton_case_gap(case) is None


def triton_compile_errors() -> tuple[type[Exception], ...]:
    """The exceptions with which Triton says a kernel cannot be built for this GPU: a front-end
    compilation error (`CompilationError`), more shared memory or threads than the card has
    (`OutOfResources`), and `ptxas` failing (`PTXASError`) — the set Triton's own autotuner treats
    as "this configuration does not compile here"."""
    from triton.compiler.errors import CompilationError
    from triton.runtime.errors import OutOfResources, PTXASError

    return (CompilationError, OutOfResources, PTXASError)


@dataclass(frozen=True)
class Kernel:
    """One implementation of both PLADIS rules, and where it runs.

    `cross_attention` and `text_block` are its functions (imported with this table, so a compiled graph never meets
    an import; Triton's behind a function importing it on first use), each of one call object (`kernel_calls`): a
    `CrossAttentionCall`, and a `TextBlockCall` whose `output` is the dense attention the seam computed when the
    kernel `adds_to_dense` the image rows' correction (otherwise the kernel computes the whole joint rule). Under
    `auto`, a failure in `compile_errors` falls back to `fallback`.
    """

    name: str
    description: str
    cross_attention: Callable[..., torch.Tensor]
    text_block: Callable[..., torch.Tensor]
    adds_to_dense: bool = True
    takes_over: Callable[[KernelCase], bool] = _never
    gap: Callable[[KernelCase], str | None] = _covers_every_case
    automatic: Callable[[KernelCase], bool] = _never
    user_choice: bool = False  # a value of PLADIS_KERNEL
    compile_errors: Callable[[], tuple[type[Exception], ...]] | None = None
    fallback: str | None = None

    def function(self, rule: str) -> Callable:
        """The function computing `rule` (`CROSS_ATTENTION` or `TEXT_BLOCK`)."""
        return self.cross_attention if rule == CROSS_ATTENTION else self.text_block


def _triton_cross_attention(call: CrossAttentionCall) -> torch.Tensor:
    from .triton_kernels import triton_pladis_attention  # Triton is imported only where its kernels run

    return triton_pladis_attention(call)


def _triton_text_block_correction_(call: TextBlockCall) -> torch.Tensor:
    from .triton_kernels import triton_text_block_correction_

    return triton_text_block_correction_(call)


KERNELS: tuple[Kernel, ...] = (
    Kernel(
        "reference",
        "reference formulation (materialised maps, the entmax package)",
        materialised.reference_cross_attention,
        materialised.reference_joint_text_block,
        adds_to_dense=False,
        takes_over=lambda case: case.settings.kernel == "reference",
        gap=_whole_sequences,
    ),
    Kernel(
        "autograd",
        "differentiable materialised path",
        materialised.autograd_pladis_attention,
        materialised.autograd_text_block,
        adds_to_dense=False,
        takes_over=lambda case: case.autograd,  # the fast paths overwrite buffers autograd cannot follow
        gap=_whole_sequences,
    ),
    Kernel(
        "triton",
        "Triton",
        _triton_cross_attention,
        _triton_text_block_correction_,
        gap=_triton_case_gap,
        automatic=_triton_automatic,
        user_choice=True,
        compile_errors=triton_compile_errors,
        fallback="torch",
    ),
    Kernel(
        "torch",
        "sync-free torch path",
        sync_free_attention.sync_free_pladis_attention,
        sync_free_attention.sync_free_text_block_correction_,
        takes_over=lambda case: torch.compiler.is_compiling(),  # a compiled graph traces it; a Triton launch breaks it
        automatic=lambda case: case.query.device.type == "cuda",
        user_choice=True,
    ),
    Kernel(
        "chunked",
        "chunked CPU path",
        chunked.chunked_pladis_attention,
        chunked.chunked_text_block_correction_,
        automatic=_always,
    ),
)
_BY_NAME = {kernel.name: kernel for kernel in KERNELS}
USER_KERNELS = (AUTO, *(kernel.name for kernel in KERNELS if kernel.user_choice))  # what PLADIS_KERNEL accepts
KERNEL_CHOICES = (AUTO, *_BY_NAME)  # what `PLADISSettings.kernel` accepts


def check_kernel_choice(kernel: object) -> str:
    """Validate a per-call kernel choice (`PLADISSettings.kernel`): one of `KERNEL_CHOICES`."""
    if kernel not in KERNEL_CHOICES:
        choices = ", ".join(KERNEL_CHOICES)
        raise ValueError(f"kernel must be one of {choices} (or None: follow {KERNEL_VARIABLE}), got {kernel!r}")
    return kernel


def requested_kernel() -> str:
    """`PLADIS_KERNEL` as set (default `auto`); any other value raises a `ValueError` naming it."""
    value = os.environ.get(KERNEL_VARIABLE, AUTO).strip().lower() or AUTO
    if value not in USER_KERNELS:
        raise ValueError(
            f"{KERNEL_VARIABLE} must be one of {', '.join(USER_KERNELS)} (auto picks Triton on CUDA when it can), "
            f"got {os.environ[KERNEL_VARIABLE]!r}"
        )
    return value


def kernel_requested(settings: PLADISSettings) -> str:
    """The kernel a call asks for: its own choice (`settings.kernel`), else `PLADIS_KERNEL` (checked)."""
    return settings.kernel or requested_kernel()


def _asked_by(settings: PLADISSettings, kernel: str) -> str:
    """Who asked for `kernel`, as an error message names it."""
    if settings.kernel is not None:
        return f"PLADISSettings(kernel={kernel!r})"
    return f"{KERNEL_VARIABLE}={kernel}"


def choose_kernel(case: KernelCase) -> Kernel:
    """The kernel that computes `case`: one that takes it over, else the one asked for (a `ValueError` naming who
    asked and why when it cannot run the case), else under `auto` the first whose `automatic` rule holds."""
    for kernel in KERNELS:
        if kernel.takes_over(case):
            reason = kernel.gap(case)
            if reason is not None:
                raise ValueError(f"the PLADIS {case.rule} rule cannot run on the {kernel.description}: {reason}")
            return kernel
    requested = kernel_requested(case.settings)
    if requested == AUTO:
        return next(kernel for kernel in KERNELS if kernel.automatic(case))
    kernel = _BY_NAME[requested]
    reason = kernel.gap(case)
    if reason is not None:
        others = " or ".join(name for name in USER_KERNELS if name != requested)
        advice = f"use {KERNEL_VARIABLE}={others}" if case.settings.kernel is None else "ask for kernel='auto'"
        raise ValueError(
            f"{_asked_by(case.settings, requested)} cannot run the PLADIS {case.rule} kernel here: {reason}; {advice}"
        )
    return kernel


def run_kernel(kernel: Kernel, case: KernelCase, call: CrossAttentionCall | TextBlockCall) -> torch.Tensor:
    """`kernel`'s function for `case.rule` on `call`. Under `auto` a kernel's failure to compile
    (`compile_errors`) falls back to its `fallback`, warning once per process and rule, and `auto` never picks it
    for that rule again. Anything else — out of memory, a launch or runtime error — propagates, as does every error
    of a kernel asked for by name."""
    function = kernel.function(case.rule)
    if kernel.compile_errors is None or kernel_requested(case.settings) == kernel.name:
        return function(call)
    try:
        return function(call)
    except kernel.compile_errors() as error:
        fallback = _BY_NAME[kernel.fallback]
        _failed.add((kernel.name, case.rule))
        warnings.warn(
            f"PLADIS: the {kernel.description} {case.rule} kernel does not compile for this GPU "
            f"({type(error).__name__}: {error}); using the {fallback.description} from now on. "
            f"Set {KERNEL_VARIABLE}={fallback.name} to silence this.",
            RuntimeWarning,
            stacklevel=3,
        )
        return run_kernel(fallback, case, call)


def needs_autograd(*tensors: torch.Tensor | None) -> bool:
    """Whether autograd records this call (grad mode on and an input requiring grad): the fast
    in-place paths cannot be recorded, so the `autograd` kernel takes the call over."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
