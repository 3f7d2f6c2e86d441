"""The sync-free `torch` path's memory traffic at the real SDXL and FLUX shapes, counted op by op on
fake CUDA tensors (`scripts/dispatch_counter.py`: every op's input and output bytes), holds its
budgets: ≤ 0.7 GB for SDXL's 4096-query cross-attention call, ≤ 6 GB for one FLUX double block's
text-block correction, with no host sync. Fake tensors take the CUDA branches (half GEMMs with
float32 output, the fused SDPA op) and cost no memory, so this runs in well under a second."""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from attention.sync_free_attention import sync_free_pladis_attention, sync_free_text_block_correction_
from scripts.dispatch_counter import count_dispatch

GB = 1e9


def _processor_layout(batch: int, tokens: int, heads: int, dim: int, dtype: torch.dtype) -> torch.Tensor:
    """A (B, H, N, D) view of (B, N, H, D) memory on fake CUDA, as the processors hand it over."""
    return torch.empty(batch, tokens, heads, dim, device="cuda", dtype=dtype).transpose(1, 2)


@pytest.fixture
def fake_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    with FakeTensorMode():
        yield


@pytest.mark.parametrize("alpha", [1.5, 2.0])
def test_sdxl_cross_attention_call_moves_under_0_7_gb(fake_cuda, alpha):
    query = _processor_layout(2, 4096, 10, 64, torch.float16)
    key, value = _processor_layout(2, 77, 10, 64, torch.float16), _processor_layout(2, 77, 10, 64, torch.float16)
    output, count = count_dispatch(lambda: sync_free_pladis_attention(query, key, value, 2.0, alpha, None, 64**-0.5))
    assert output.shape == (2, 10, 4096, 64) and output.dtype == torch.float16
    assert count.syncs == 0
    assert count.bytes <= 0.7 * GB, count.bytes_by_name.most_common(8)


@pytest.mark.parametrize("alpha", [1.5, 2.0])
def test_flux_double_block_correction_moves_under_6_gb(fake_cuda, alpha):
    query, key, value = (_processor_layout(1, 4608, 24, 128, torch.bfloat16) for _ in range(3))
    output = _processor_layout(1, 4608, 24, 128, torch.bfloat16)
    log_normaliser = torch.empty(1, 24, 4608, device="cuda")
    corrected, count = count_dispatch(
        lambda: sync_free_text_block_correction_(
            output, query, key, value, slice(0, 512), slice(512, 4608), 2.0, alpha, None, 128**-0.5, log_normaliser
        )
    )
    assert corrected is output and count.syncs == 0
    assert count.bytes <= 6 * GB, count.bytes_by_name.most_common(8)


def test_byte_count_reads_inputs_and_writes_outputs_of_every_op():
    """The counter's model on a known sequence: an out-of-place op reads its inputs and writes its
    output, an in-place op reads and writes its tensor, a broadcast input counts once, and a
    gather reads only what it selects."""
    with FakeTensorMode():
        rows = torch.empty(1000, 50, device="cuda")  # 200 kB
        shift = torch.empty(1000, 1, device="cuda")  # 4 kB, broadcast over the 50 columns
        index = torch.zeros(1000, 1, dtype=torch.int64, device="cuda")  # 8 kB

        def sequence():
            moved = torch.sub(rows, shift)  # 200 kB + 4 kB read, 200 kB written
            moved.mul_(2.0)  # 200 kB read, 200 kB written
            moved.expand(3, 1000, 50).sum(0)  # a stride-0 view: 200 kB read once, 200 kB written
            return moved.gather(-1, index)  # 4 kB selected + 8 kB index read, 4 kB written

    _, count = count_dispatch(sequence)
    assert count.ops == 4 and count.syncs == 0
    assert count.bytes_by_name == {"sub": 404_000, "mul_": 400_000, "sum": 400_000, "gather": 16_000}
