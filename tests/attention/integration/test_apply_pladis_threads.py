"""`apply_pladis` and threads: its settings are a `ContextVar` of the thread that entered the block, so work
handed to a new thread or an executor inside the block runs without PLADIS unless it runs in a copy of the
context (`asyncio.to_thread`, `contextvars.copy_context().run`); a block object is entered once, and ends in
the thread that entered it (else a clear `RuntimeError`, and the denoiser still ends as it started)."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from attention import apply_pladis
from tests.attention.integration.test_install import unet_inputs
from tests.family_runs import build
from tests.tiny import processors_by_name, same_processor_objects


@pytest.fixture(scope="module")
def unet():
    return build("sd15").unet


def output(unet) -> torch.Tensor:
    with torch.no_grad():
        return unet(**unet_inputs(unet)).sample


def in_new_thread(function, *args):
    result = {}
    thread = threading.Thread(target=lambda: result.update(value=function(*args)))
    thread.start()
    thread.join(60)
    return result["value"]


def test_work_handed_to_other_threads_gets_pladis_only_in_a_copy_of_the_context(unet):
    stock = output(unet)
    with apply_pladis(unet, 2.0):
        boosted = output(unet)
        new_thread = in_new_thread(output, unet)
        with ThreadPoolExecutor(1) as executor:
            executor_result = executor.submit(output, unet).result()
            copied = executor.submit(contextvars.copy_context().run, output, unet).result()
        to_thread = asyncio.run(asyncio.to_thread(output, unet))
    assert (boosted - stock).abs().max() > 1e-4
    assert torch.equal(new_thread, stock) and torch.equal(executor_result, stock)  # documented: no PLADIS there
    assert torch.equal(copied, boosted) and torch.equal(to_thread, boosted)


def test_a_block_object_cannot_be_entered_twice(unet):
    before = processors_by_name(unet)
    block = apply_pladis(unet, 2.0)
    with block:
        with pytest.raises(RuntimeError, match=r"this apply_pladis\(...\) block was already entered; make a new"):
            block.__enter__()
        boosted = output(unet)
    with pytest.raises(RuntimeError, match="already entered"):
        with block:
            pass
    assert same_processor_objects(unet, before)
    with apply_pladis(unet, 2.0):
        assert torch.equal(output(unet), boosted)  # a fresh block still works


def test_leaving_a_block_from_another_thread_is_a_clear_error_and_restores_the_denoiser(unet):
    before, hooks = processors_by_name(unet), dict(unet._forward_pre_hooks)
    stock = output(unet)
    block = apply_pladis(unet, 2.0)

    def entering_thread():  # in a context of its own, like a thread of a server
        block.__enter__()
        with pytest.raises(RuntimeError, match="left in another thread or asyncio task than the one that entered"):
            in_new_thread_raising(block.__exit__, None, None, None)
        assert torch.equal(output(unet), stock)  # no PLADIS left here either
        with pytest.raises(RuntimeError, match="already ended"):
            block.__exit__(None, None, None)

    contextvars.Context().run(entering_thread)
    assert same_processor_objects(unet, before) and dict(unet._forward_pre_hooks) == hooks


def in_new_thread_raising(function, *args):
    """Run `function(*args)` in a new thread and re-raise its exception here."""
    errors = []

    def run():
        try:
            function(*args)
        except BaseException as error:  # noqa: BLE001 - re-raised in the calling thread
            errors.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(60)
    if errors:
        raise errors[0]
