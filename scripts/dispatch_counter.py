"""Count what a call dispatches: kernels (a proxy for CUDA launches) and host–device syncs.

A `TorchDispatchMode` sees every ATen op a call runs, on any device, so the launches and syncs a
processor would cost on a GPU can be counted on this CPU (tests and the benchmark use it).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# Ops that read a device value back to the host, or whose output size depends on data.
_SYNC_OPS = {
    "_local_scalar_dense",
    "nonzero",
    "masked_select",
    "is_nonzero",
    "equal",
    "allclose",
    "unique",
    "_unique2",
    "item",
}
# Ops that launch no kernel: allocation and metadata.
_FREE_OPS = {
    "empty",
    "empty_like",
    "empty_strided",
    "new_empty",
    "new_empty_strided",
    "detach",
    "lift_fresh",
    "_unsafe_view",
    "_reshape_alias",
    "alias",
    "sym_size",
    "sym_stride",
    "sym_numel",
    "sym_storage_offset",
    "copy_meta",
    "device",  # `prim.device`, seen on fake tensors
}


@dataclass
class DispatchCount:
    """Kernels (`ops`, views and allocations excluded) and host–device `syncs` of one call, by op name."""

    ops: int = 0
    syncs: int = 0
    by_name: Counter = field(default_factory=Counter)

    def add_launch(self, name: str) -> None:
        """Count one kernel launch the dispatcher does not see (a Triton kernel, a fused op run elsewhere)."""
        self.ops += 1
        self.by_name[name] += 1


def _host_device_copy(name: str, args: tuple, kwargs: dict) -> bool:
    """A blocking copy between the host and a device (`.cpu()`, `.to("cuda")` of host data): PyTorch
    waits for it to finish, a sync."""
    if name == "_to_copy" and kwargs.get("device") is not None:
        source, target = args[0].device.type, torch.device(kwargs["device"]).type
        non_blocking = kwargs.get("non_blocking", False)
    elif name == "copy_" and isinstance(args[1], torch.Tensor):
        source, target = args[1].device.type, args[0].device.type
        non_blocking = kwargs.get("non_blocking", len(args) > 2 and args[2])
    else:
        return False
    return source != target and "cpu" in (source, target) and not non_blocking


class _Counting(TorchDispatchMode):
    def __init__(self, count: DispatchCount) -> None:
        super().__init__()
        self.count = count

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        boolean_index = name == "index" and any(
            isinstance(index, torch.Tensor) and index.dtype == torch.bool for index in (args[1] or ())
        )
        if name in _SYNC_OPS or boolean_index or _host_device_copy(name, args, kwargs or {}):
            self.count.syncs += 1
        if not (func.is_view or name in _FREE_OPS):
            self.count.ops += 1
            self.count.by_name[name] += 1
        return func(*args, **(kwargs or {}))


def count_dispatch(call: Callable[[], object]) -> tuple[object, DispatchCount]:
    """Run `call()` once and return its result with the kernels and syncs it dispatched."""
    count = DispatchCount()
    with _Counting(count):
        result = call()
    return result, count
