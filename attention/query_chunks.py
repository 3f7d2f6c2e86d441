"""Query chunks over one reused workspace: the loop both PLADIS attention paths run.

Scores are built one chunk of query rows at a time so extra memory stays bounded whatever the
sequence length. Every chunk-sized tensor (the float32 copy of the query rows, the scores, the
threshold solver's scratch, the `A·V` product) is a view of flat buffers allocated once per call:
fresh chunk-sized temporaries cost more in page faults on CPU than the arithmetic done on them,
and a contiguous query copy keeps the batched matmul from copying strided heads by itself.
"""

from __future__ import annotations

from typing import Iterator, NamedTuple

import torch


class QueryChunk(NamedTuple):
    """One chunk's views: `rows` of the query, their float32 `query` copy (…, r, D), `scores`
    (…, r, keys), three score-shaped `workspace` buffers and the `product` (…, r, value_dim)."""

    rows: slice
    query: torch.Tensor
    scores: torch.Tensor
    workspace: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    product: torch.Tensor


def query_chunks(
    query: torch.Tensor, rows: slice, keys: int, value_dim: int, budget: int
) -> Iterator[QueryChunk]:
    """Split `query[..., rows, :]` into equal chunks of about `budget` scores (the last may be shorter).

    The chunks are as few as the budget allows and equal in size, so one workspace serves them all.
    """
    batch_shape, head_dim = query.shape[:-2], query.shape[-1]
    batch_heads = batch_shape.numel()
    total = rows.stop - rows.start
    chunks = max(1, -(-total * batch_heads * keys // budget))
    rows_per_chunk = max(1, -(-total // chunks))
    widths = (head_dim, keys, keys, keys, keys, value_dim)
    flat = [query.new_empty(batch_heads * rows_per_chunk * width, dtype=torch.float32) for width in widths]
    for start in range(rows.start, rows.stop, rows_per_chunk):
        stop = min(start + rows_per_chunk, rows.stop)
        views = [
            buffer[: batch_heads * (stop - start) * width].view(*batch_shape, stop - start, width)
            for buffer, width in zip(flat, widths)
        ]
        query_rows, scores, *workspace, product = views
        query_rows.copy_(query[..., start:stop, :])
        yield QueryChunk(slice(start, stop), query_rows, scores, tuple(workspace), product)
