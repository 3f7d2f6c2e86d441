"""Query chunks over one reused workspace: the loop both PLADIS attention paths run.

Scores are built one chunk of query rows at a time so extra memory stays bounded whatever the
sequence length. Every chunk-sized tensor (the float32 copy of the query rows, the scores, the
threshold solver's scratch, the `A·V` product) is a view of flat buffers allocated once per call:
fresh chunk-sized temporaries cost more in page faults on CPU than the arithmetic done on them,
and a contiguous query copy keeps the batched matmul from copying strided heads by itself. On CPU
the flat buffer is also kept for the thread's next call (`_kept_flat_buffer`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import NamedTuple

import torch

# On CPU one flat workspace of up to this size is kept per thread between calls (CUDA's caching
# allocator already reuses memory): SDXL chunks need ~24 MB, FLUX's ~42 MB.
_KEPT_WORKSPACE_BYTES = 64 << 20
_kept = threading.local()


class QueryChunk(NamedTuple):
    """One chunk's views: `rows` of the query, their float32 `query` copy (…, r, D), `scores`
    (…, r, keys), three score-shaped `workspace` buffers and the `product` (…, r, value_dim)."""

    rows: slice
    query: torch.Tensor
    scores: torch.Tensor
    workspace: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    product: torch.Tensor


def query_chunks(query: torch.Tensor, rows: slice, keys: int, value_dim: int, budget: int) -> Iterator[QueryChunk]:
    """Split `query[..., rows, :]` into equal chunks of about `budget` scores (the last may be shorter).

    The chunks are as few as the budget allows and equal in size, so one workspace serves them all.
    """
    batch_shape, head_dim = query.shape[:-2], query.shape[-1]
    batch_heads = batch_shape.numel()
    total = rows.stop - rows.start
    chunks = max(1, -(-total * batch_heads * keys // budget))
    rows_per_chunk = max(1, -(-total // chunks))
    widths = (head_dim, keys, keys, keys, keys, value_dim)
    sizes = [batch_heads * rows_per_chunk * width for width in widths]
    flat = _kept_flat_buffer(query.device, sum(sizes)).split(sizes)
    for start in range(rows.start, rows.stop, rows_per_chunk):
        stop = min(start + rows_per_chunk, rows.stop)
        views = [
            buffer[: batch_heads * (stop - start) * width].view(*batch_shape, stop - start, width)
            for buffer, width in zip(flat, widths, strict=True)
        ]
        query_rows, scores, *workspace, product = views
        query_rows.copy_(query[..., start:stop, :])
        yield QueryChunk(slice(start, stop), query_rows, scores, tuple(workspace), product)


def _kept_flat_buffer(device: torch.device, numel: int) -> torch.Tensor:
    """A flat float32 buffer of `numel` elements; on CPU the thread's kept one when it fits.

    Fresh CPU buffers cost a page fault per 4 KB on every call (~6 % of an SDXL cross-attention call
    measured here). Views of the kept buffer never leave a call: results are copied out of it. Under
    `torch.compile` nothing is kept (a graph must not capture Python-side state).
    """
    nbytes = numel * 4
    if device.type != "cpu" or nbytes > _KEPT_WORKSPACE_BYTES or torch.compiler.is_compiling():
        return torch.empty(numel, dtype=torch.float32, device=device)
    kept = getattr(_kept, "buffer", None)
    if kept is None or kept.numel() < numel:
        with torch.inference_mode(False):  # a normal tensor: usable in and out of inference mode
            kept = _kept.buffer = torch.empty(numel, dtype=torch.float32, device=device)
    return kept[:numel]
