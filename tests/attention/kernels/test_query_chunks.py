"""The query-chunk loop both PLADIS attention paths share: coverage, equal chunks, one workspace."""

from __future__ import annotations

import torch

import attention.kernels.query_chunks as query_chunks_module
from attention.kernels.cross_attention import pladis_scaled_dot_product_attention
from attention.kernels.query_chunks import query_chunks


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


def test_cpu_workspace_is_kept_between_calls_up_to_its_bound(monkeypatch):
    def workspace_pointer(rows: int) -> int:
        chunk = next(query_chunks(torch.randn(1, 2, rows, 8), slice(0, rows), keys=7, value_dim=8, budget=10**6))
        return chunk.query.data_ptr()

    first = workspace_pointer(40)
    assert workspace_pointer(30) == first  # a smaller call reuses the kept buffer
    larger = workspace_pointer(400)
    assert workspace_pointer(400) == larger  # it grows once, then is reused
    monkeypatch.setattr(query_chunks_module, "_KEPT_WORKSPACE_BYTES", 1024)
    assert workspace_pointer(400) != larger  # above the bound a call gets its own buffer


def test_calls_with_a_kept_workspace_give_the_same_result():
    q, k, v = (torch.randn(2, 3, n, 8, generator=torch.Generator().manual_seed(n)) for n in (64, 9, 9))
    first = pladis_scaled_dot_product_attention(q, k, v, 2.0)
    pladis_scaled_dot_product_attention(q * 3, k, v, 1.5)  # overwrites the kept buffer
    torch.testing.assert_close(pladis_scaled_dot_product_attention(q, k, v, 2.0), first, atol=0, rtol=0)


def test_kept_workspace_works_in_and_out_of_inference_mode(monkeypatch):
    """A workspace first made under `torch.inference_mode()` must stay usable by later no-grad calls."""
    q, k, v = (torch.randn(1, 2, n, 8, generator=torch.Generator().manual_seed(n)) for n in (30, 9, 9))
    monkeypatch.setattr(query_chunks_module._kept, "buffer", None, raising=False)
    with torch.inference_mode():
        in_inference = pladis_scaled_dot_product_attention(q, k, v, 2.0)
    with torch.no_grad():
        torch.testing.assert_close(pladis_scaled_dot_product_attention(q, k, v, 2.0), in_inference, atol=0, rtol=0)
    with torch.inference_mode():
        torch.testing.assert_close(pladis_scaled_dot_product_attention(q, k, v, 2.0), in_inference, atol=0, rtol=0)
