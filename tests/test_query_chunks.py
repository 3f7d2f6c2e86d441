"""The query-chunk loop both PLADIS attention paths share: coverage, equal chunks, one workspace."""

from __future__ import annotations

import torch

from attention.functional import pladis_scaled_dot_product_attention
from attention.query_chunks import query_chunks


def test_chunks_cover_the_rows_once_in_equal_sizes_within_budget():
    query = torch.randn(2, 3, 50, 8)
    chunks = list(query_chunks(query, slice(5, 50), keys=7, value_dim=4, budget=2 * 3 * 7 * 10))
    assert [c.rows for c in chunks] == [slice(5, 14), slice(14, 23), slice(23, 32), slice(32, 41), slice(41, 50)]
    for chunk in chunks:
        rows = chunk.rows.stop - chunk.rows.start
        assert chunk.scores.shape == (2, 3, rows, 7) and chunk.scores.numel() <= 2 * 3 * 7 * 10
        assert chunk.product.shape == (2, 3, rows, 4)
        assert all(buffer.shape == chunk.scores.shape for buffer in chunk.workspace)
        assert chunk.query.is_contiguous() and chunk.query.dtype == torch.float32


def test_chunks_reuse_one_workspace_and_copy_strided_half_queries():
    heads_last = torch.randn(1, 40, 2, 8, dtype=torch.bfloat16)  # the processors' (B, N, H, D) memory
    query = heads_last.transpose(1, 2)
    seen = set()
    for chunk in query_chunks(query, slice(0, 40), keys=5, value_dim=8, budget=2 * 5 * 16):
        torch.testing.assert_close(chunk.query, query[..., chunk.rows, :].float(), atol=0, rtol=0)
        seen.add((chunk.scores.data_ptr(), chunk.product.data_ptr(), chunk.query.data_ptr()))
    assert len(seen) == 1  # every chunk views the same buffers


def test_result_keeps_the_processors_head_layout():
    """For (B, N, H, D) memory seen as (B, H, N, D), merging heads afterwards is a view, as after SDPA."""
    q, k, v = (torch.randn(2, n, 3, 8).transpose(1, 2) for n in (30, 9, 9))
    out = pladis_scaled_dot_product_attention(q, k, v, 2.0)
    assert out.transpose(1, 2).is_contiguous()
    expected = pladis_scaled_dot_product_attention(q.contiguous(), k.contiguous(), v.contiguous(), 2.0)
    torch.testing.assert_close(out, expected)
