"""Count what a call dispatches: kernels (a proxy for CUDA launches), host–device syncs, and bytes.

A `TorchDispatchMode` sees every ATen op a call runs, on any device, so the launches and syncs a
processor would cost on a GPU can be counted on this CPU (tests and the benchmark use it).

The byte count models the memory traffic of a GPU that runs one kernel per op: the sum of every
counted op's input and output tensor bytes (an in-place op reads and writes its tensor: twice; a
broadcast dimension counts once). Two refinements keep it a traffic model rather than a sum of
shapes: lookups (`gather`, `take_along_dim`, `index_select`) read as many source elements as they
write, a `searchsorted` reads about log2(length) + 1 entries of each sorted row, and the `new_*`
factories read nothing of the tensor they take their dtype from. On `meta` or fake tensors the count
costs no memory and no arithmetic, so real SDXL/FLUX shapes count in milliseconds.
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
    """Kernels (`ops`, views and allocations excluded), host–device `syncs` and the bytes the kernels
    read and write (`bytes`: inputs + outputs), of one call, by op name."""

    ops: int = 0
    syncs: int = 0
    bytes: int = 0
    by_name: Counter = field(default_factory=Counter)
    bytes_by_name: Counter = field(default_factory=Counter)

    def add_launch(self, name: str) -> None:
        """Count one kernel launch the dispatcher does not see (a Triton kernel, a fused op run elsewhere)."""
        self.ops += 1
        self.by_name[name] += 1


def _elements(tensor: torch.Tensor) -> int:
    """Elements of `tensor` in memory (a stride-0 dimension counts once)."""
    elements = 1
    for size, stride in zip(tensor.shape, tensor.stride(), strict=True):
        elements *= size if stride else 1
    return elements


def _tensor_bytes(values) -> int:
    """Bytes of the tensors among `values` (nested lists/tuples too): the elements in memory, so a
    broadcast (stride-0) dimension counts once, as a kernel reads it from cache."""
    total = 0
    for value in values:
        if isinstance(value, torch.Tensor):
            total += _elements(value) * value.element_size()
        elif isinstance(value, (list, tuple)):
            total += _tensor_bytes(value)
    return total


_LOOKUPS = {"gather", "take_along_dim", "index_select"}  # (source, dim, index): read what they write


def _moved_bytes(func, name: str, args: tuple, kwargs: dict, result) -> int:
    """Bytes one op reads and writes (see the module docstring for the model)."""
    outputs = result if isinstance(result, (list, tuple)) else (result,)
    written = _tensor_bytes(outputs)
    if name.startswith("new_"):
        return written
    if name in _LOOKUPS:
        return 2 * written + _tensor_bytes(args[2:])  # the selected elements, the output, the index
    if name == "searchsorted":
        sorted_rows, values = args[0], args[1]
        probes = max(1, sorted_rows.shape[-1]).bit_length() + 1
        rows = _elements(sorted_rows) // max(1, sorted_rows.shape[-1])
        return rows * probes * sorted_rows.element_size() + _tensor_bytes([values]) + written
    outs = {argument.name for argument in func._schema.arguments if argument.is_out}
    read = _tensor_bytes(args) + _tensor_bytes(value for key, value in kwargs.items() if key not in outs)
    return read + written


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
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        if not (func.is_view or name in _FREE_OPS):
            self.count.ops += 1
            self.count.by_name[name] += 1
            moved = _moved_bytes(func, name, args, kwargs, result)
            self.count.bytes += moved
            self.count.bytes_by_name[name] += moved
        return result


def count_dispatch(call: Callable[[], object]) -> tuple[object, DispatchCount]:
    """Run `call()` once and return its result with the kernels, syncs and bytes it dispatched."""
    count = DispatchCount()
    with _Counting(count):
        result = call()
    return result, count


def _processor_layout(batch: int, tokens: int, heads: int, dim: int, dtype: torch.dtype) -> torch.Tensor:
    """A (B, H, N, D) view of (B, N, H, D) memory on the current device, as the processors hand it over."""
    return torch.empty(batch, tokens, heads, dim, device="cuda", dtype=dtype).transpose(1, 2)


def _sdxl_cross_attention(alpha: float):
    """One SDXL `attn2` call at its 4096-query level (1024², CFG batch 2, 10 heads × 64, 77 text keys)."""
    from attention.kernels.kernel_calls import CrossAttentionCall
    from attention.kernels.sync_free_attention import sync_free_pladis_attention
    from attention.settings import PLADISSettings

    query = _processor_layout(2, 4096, 10, 64, torch.float16)
    key, value = (_processor_layout(2, 77, 10, 64, torch.float16) for _ in range(2))
    call = CrossAttentionCall(query, key, value, PLADISSettings(2.0, alpha), None, 64**-0.5)
    return lambda: sync_free_pladis_attention(call)


def _flux_text_block(alpha: float):
    """One FLUX double block's text-block correction (1024²: 4096 image + 512 text tokens, 24 heads × 128)."""
    from attention.kernels.kernel_calls import TextBlockCall
    from attention.kernels.sync_free_attention import sync_free_text_block_correction_
    from attention.settings import PLADISSettings

    query, key, value, output = (_processor_layout(1, 4608, 24, 128, torch.bfloat16) for _ in range(4))
    log_normaliser = torch.empty(1, 24, 4608, device="cuda")
    settings, text, image = PLADISSettings(2.0, alpha), slice(0, 512), slice(512, 4608)
    call = TextBlockCall(query, key, value, text, image, settings, None, None, 128**-0.5, output, log_normaliser)
    return lambda: sync_free_text_block_correction_(call)


TORCH_PATH_CASES = {
    "SDXL attn2 call, 2 × 4096 queries × 77 keys, 10 heads × 64, fp16": _sdxl_cross_attention,
    "FLUX double-block correction, 4096 image × 512 text, 24 heads × 128, bf16": _flux_text_block,
}


def torch_path_counts(case: str, alpha: float = 1.5) -> tuple[object, DispatchCount]:
    """The sync-free `torch` path's launches, syncs and bytes for one of `TORCH_PATH_CASES`, counted on
    fake CUDA tensors (`FakeTensorMode`: the CUDA branches run, nothing is allocated, any data-dependent
    op raises) with the device patched to an sm_90 card."""
    from unittest import mock

    from torch._subclasses.fake_tensor import FakeTensorMode

    with mock.patch.object(torch.cuda, "get_device_capability", lambda device=None: (9, 0)), FakeTensorMode():
        return count_dispatch(TORCH_PATH_CASES[case](alpha))


def main() -> None:
    print("| `torch` path call (fake CUDA, sm_90) | α | launches | syncs | bytes moved |")
    print("|---|---|---|---|---|")
    for case in TORCH_PATH_CASES:
        for alpha in (1.5, 2.0):
            _, count = torch_path_counts(case, alpha)
            print(f"| {case} | {alpha} | {count.ops} | {count.syncs} | {count.bytes / 1e9:.3f} GB |")


if __name__ == "__main__":
    main()
