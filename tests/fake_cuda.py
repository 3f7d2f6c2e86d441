"""The CUDA code paths on this CPU (NOTES §7): fake tensors on device "cuda" for a chosen card.

Inside `fake_cuda(capability)` tensors made on "cuda" are `FakeTensor`s: the project's CUDA branches run
unpatched through the ops' meta kernels, and any data-dependent op (`.item()`, `nonzero`, `bool(t)`,
boolean indexing) raises, so a call that completes made no host sync. `torch.cuda.get_device_capability`
answers for the chosen card, and every Triton kernel of `attention.kernels.triton_kernels` is a stub that
records its launch. `count_launches` counts what a call would launch on the GPU: dispatched ATen ops
(views and allocations excluded; host–device copies counted as syncs), each Triton launch, and each
`F.scaled_dot_product_attention` as the one fused kernel it is on a GPU (fake tensors cannot run the
device's backend choice: unpatched, SDPA would decompose into its math path).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from unittest import mock

import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.overrides import TorchFunctionMode

from attention.kernels.sdpa_backend import CUDNN, EFFICIENT, FLASH, stock_sdpa_backend
from scripts.dev.dispatch_counter import DispatchCount, count_dispatch

CARDS = {
    (7, 0): "V100",
    (7, 5): "T4 / RTX 20xx",
    (8, 0): "A100",
    (8, 6): "RTX 30xx / A10",
    (9, 0): "H100 / H200",
    (10, 0): "B200",
    (12, 0): "RTX 50xx",
}
_counts: list[DispatchCount] = []  # the counts of the `count_launches` calls running now (innermost last)


class _KernelLaunches:
    """A Triton kernel that records each launch (`kernel[grid](...)`) in the running count."""

    def __init__(self, name: str, launches: list[tuple[str, dict]]) -> None:
        self.name, self.launches = name, launches

    def __getitem__(self, grid):
        def launch(*args, **kwargs) -> None:
            self.launches.append((self.name, kwargs))
            if _counts:
                _counts[-1].add_launch(f"triton:{self.name}")

        return launch


class _OneFusedSDPA(TorchFunctionMode):
    """`F.scaled_dot_product_attention` as the one fused kernel it is on the card: unmasked, the aten op
    torch picks there (`stock_sdpa_backend`: its meta kernel gives the output layout), else one launch
    with the fused kernels' (B, N, H, D) output memory."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is not F.scaled_dot_product_attention:
            return func(*args, **(kwargs or {}))
        names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale")
        arguments = dict(zip(names, args, strict=False), **(kwargs or {}))
        query, key, value = arguments["query"], arguments["key"], arguments["value"]
        mask, scale = arguments.get("attn_mask"), arguments.get("scale")
        fused = _FUSED_OPS.get(stock_sdpa_backend(query, key, value, mask)) if query.dim() == 4 else None
        if mask is None and fused is not None and query.shape[-1] == key.shape[-1] == value.shape[-1]:
            return fused(query, key, value, scale)
        if _counts:
            _counts[-1].add_launch("scaled_dot_product_attention")
        if query.dim() != 4:
            return query.new_empty((*query.shape[:-1], value.shape[-1]))
        batch, heads, rows, _ = query.shape
        return query.new_empty((batch, rows, heads, value.shape[-1])).transpose(1, 2)


_FUSED_OPS = {
    FLASH: lambda q, k, v, scale: torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, scale=scale)[0],
    CUDNN: lambda q, k, v, scale: torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, None, False, scale=scale)[
        0
    ],
    EFFICIENT: lambda q, k, v, scale: torch.ops.aten._scaled_dot_product_efficient_attention(
        q, k, v, None, False, scale=scale
    )[0],
}


@contextmanager
def fake_cuda(capability: tuple[int, int] = (9, 0)) -> Iterator[list[tuple[str, dict]]]:
    """Fake CUDA tensors on a card of `capability`; yields the list the stubbed Triton kernels append
    `(kernel name, launch keyword arguments)` to."""
    import triton

    import attention.kernels.triton_kernels as triton_kernels

    launches: list[tuple[str, dict]] = []
    with ExitStack() as stack:
        stack.enter_context(mock.patch.object(torch.cuda, "get_device_capability", lambda device=None: capability))
        for name, kernel in vars(triton_kernels).items():
            if isinstance(kernel, triton.runtime.KernelInterface):
                stack.enter_context(mock.patch.object(triton_kernels, name, _KernelLaunches(name, launches)))
        stack.enter_context(FakeTensorMode())
        yield launches


@contextmanager
def building_on_cuda(dtype: torch.dtype) -> Iterator[None]:
    """Inside `fake_cuda`: modules and tensors made without a device or dtype are made on "cuda" in `dtype`
    (fake parameters cannot be moved or cast after they are made)."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("cuda"):
            yield
    finally:
        torch.set_default_dtype(default)


def count_launches(call: Callable[[], object]) -> tuple[object, DispatchCount]:
    """Run `call()` once inside `fake_cuda`: its result and the kernels it would launch on the GPU."""
    count = DispatchCount()
    _counts.append(count)
    try:
        with _OneFusedSDPA():
            result, dispatched = count_dispatch(call)
    finally:
        _counts.pop()
    count.ops += dispatched.ops
    count.syncs += dispatched.syncs
    count.by_name.update(dispatched.by_name)
    return result, count
