"""Running a function on several CPU ranks (gloo) forked from the test process, for the many-GPU tests.

The ranks are forked, so they share the parent's imports and the models it built (about a second a run);
each joins a gloo group with a 60 s timeout, so a collective that never completes fails instead of hanging,
and the parent gives a run a deadline and kills ranks still running after it.

diffusers 0.42's parallelism runs on CPU with shims that exist only here, in the tests:
- `torch.accelerator.device_count` returns 1 around `enable_parallelism` (diffusers computes the rank's
  device as `rank % device_count()`, and a CPU-only machine has no accelerator);
- in `native_attention_with_lse`, the `native` backend's forward op of the templated context-parallel
  attention also returns the log-sum-exp, from PyTorch's CPU flash kernel (the stock op refuses
  `return_lse=True`, which ring attention always asks for; every other context-parallel backend needs CUDA);
- tensor parallelism: `cpu` joins diffusers' device-type allowlist (DTensor itself runs on gloo).
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from unittest import mock

import numpy as np
import torch
import torch.distributed as dist
from diffusers.hooks import tensor_parallel
from diffusers.models import attention_dispatch

GLOO_TIMEOUT = timedelta(seconds=60)  # a collective waiting longer raises in the rank
DEADLINE_S = 150.0  # a whole run; a rank still running after it is killed and the test fails
_STOCK_FORWARD_OP = attention_dispatch._native_attention_forward_op


def _native_forward_op_with_lse(
    ctx,
    query,
    key,
    value,
    attn_mask=None,
    dropout_p=0.0,
    is_causal=False,
    scale=None,
    enable_gqa=False,
    return_lse=False,
    _save_ctx=True,
    _parallel_config=None,
):
    """diffusers' native forward op ((B, N, H, D)), with the log-sum-exp (B, N, H) when asked for."""
    if not return_lse:
        return _STOCK_FORWARD_OP(
            ctx, query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, False, _save_ctx=_save_ctx
        )
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))
    if attn_mask is not None and attn_mask.dtype == torch.bool:  # the CPU kernel takes masks in the query dtype
        attn_mask = torch.zeros(attn_mask.shape, dtype=q.dtype).masked_fill_(~attn_mask, float("-inf"))
    output, log_normaliser = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q, k, v, attn_mask=attn_mask, scale=scale
    )[:2]
    return output.transpose(1, 2), log_normaliser.transpose(1, 2)


@contextmanager
def native_attention_with_lse() -> Iterator[None]:
    """The ring shim: the native backend's context-parallel forward op returns the log-sum-exp on CPU."""
    with mock.patch.object(attention_dispatch, "_native_attention_forward_op", _native_forward_op_with_lse):
        yield


def parallelise(model: torch.nn.Module, config: object) -> torch.nn.Module:
    """`model.enable_parallelism(config=config)` on this CPU rank (the device-count and TP-device shims)."""
    with (
        mock.patch.object(torch.accelerator, "device_count", return_value=1),
        mock.patch.object(tensor_parallel, "_SUPPORTED_TP_DEVICES", (*tensor_parallel._SUPPORTED_TP_DEVICES, "cpu")),
    ):
        model.enable_parallelism(config=config)
    return model


def _rank_main(rank: int, world: int, store_path: str, work: Callable[[int], object], results) -> None:
    try:
        store = dist.FileStore(store_path, world)
        dist.init_process_group("gloo", store=store, rank=rank, world_size=world, timeout=GLOO_TIMEOUT)
        try:
            with native_attention_with_lse():
                payload = work(rank)
        finally:
            dist.destroy_process_group()
        results.put((rank, "ok", payload))
    except BaseException:  # noqa: BLE001 - everything a rank raises goes back to the test
        results.put((rank, "error", traceback.format_exc()))


def run_on_ranks(world: int, work: Callable[[int], object]) -> list:
    """`work(rank)` on `world` forked gloo ranks; every rank's return value (numpy arrays, plain data), by rank.
    A rank that raises fails the test with its traceback; one still running at the deadline fails it too."""
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    with tempfile.TemporaryDirectory() as folder:
        ranks = [
            context.Process(target=_rank_main, args=(rank, world, os.path.join(folder, "store"), work, results))
            for rank in range(world)
        ]
        for process in ranks:
            process.start()
        payloads: dict[int, object] = {}
        deadline = time.monotonic() + DEADLINE_S
        try:
            while len(payloads) < world:
                try:
                    rank, status, payload = results.get(timeout=max(0.1, deadline - time.monotonic()))
                except queue.Empty:
                    raise AssertionError(
                        f"ranks {sorted(set(range(world)) - set(payloads))} did not finish within {DEADLINE_S:.0f} s"
                    ) from None
                if status == "error":
                    raise AssertionError(f"rank {rank} raised:\n{payload}")
                payloads[rank] = payload
        finally:
            for process in ranks:  # after a failure the others may wait in a collective: end them now
                process.join(timeout=5.0 if len(payloads) == world else 0.0)
                if process.is_alive():
                    process.kill()
                    process.join()
    return [payloads[rank] for rank in range(world)]


def as_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A rank's output as plain data for the queue (a DTensor from tensor parallelism as its full tensor)."""
    tensor = tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor
    return tensor.detach().cpu().numpy()
