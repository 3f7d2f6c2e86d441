"""The sync-free `torch` path's memory traffic at the real SDXL and FLUX shapes, counted op by op on
fake CUDA tensors (`scripts/dev/dispatch_counter.py`: every op's input and output bytes), holds its
budgets: ≤ 0.7 GB for SDXL's 4096-query cross-attention call, ≤ 6 GB for one FLUX double block's
text-block correction, with no host sync. Fake tensors take the CUDA branches (half GEMMs with
float32 output, the fused SDPA op) and cost no memory, so this runs in well under a second."""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from scripts.dev.dispatch_counter import TORCH_PATH_CASES, count_dispatch, torch_path_counts

GB = 1e9
SDXL, FLUX = TORCH_PATH_CASES


@pytest.mark.parametrize("alpha", [1.5, 2.0])
def test_sdxl_cross_attention_call_moves_under_0_7_gb(alpha):
    output, count = torch_path_counts(SDXL, alpha)
    assert output.shape == (2, 10, 4096, 64) and output.dtype == torch.float16
    assert count.syncs == 0
    assert count.bytes <= 0.7 * GB, count.bytes_by_name.most_common(8)


@pytest.mark.parametrize("alpha", [1.5, 2.0])
def test_flux_double_block_correction_moves_under_6_gb(alpha):
    output, count = torch_path_counts(FLUX, alpha)
    assert output.shape == (1, 24, 4608, 128) and output.dtype == torch.bfloat16
    assert count.syncs == 0
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
