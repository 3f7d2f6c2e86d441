"""Overlapping calls on a shared denoiser (diffusers' server pattern: `from_pipe` with a fresh scheduler per
request, run in threads): every call gives exactly the image it gives alone — PLADIS calls with their own
λ/α and stock pipelines alike — whatever order the calls end in, and once the last one ends the denoiser
holds its original processor objects and no hooks."""

from __future__ import annotations

import copy
import threading

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLPipeline

from attention import apply_pladis
from pipeline.pipeline_flux_pladis import PLADISFluxPipeline
from pipeline.pipeline_sdxl import PLADISStableDiffusionXLPipeline
from pipeline.pipeline_sdxl_seg import PLADISStableDiffusionXLSEGPipeline
from scripts.cli.assets import TINY_FLUX_SCHNELL, TINY_SDXL
from scripts.dev.build_tiny_assets import tiny_flux_transformer
from tests.attention.integration.test_install import flux_inputs
from tests.family_runs import one_thread  # noqa: F401
from tests.tiny import processors_by_name, run_pipe, same_processor_objects

TIMEOUT = 120  # seconds a thread waits for another before the test fails instead of hanging


def run_threads(targets: dict) -> dict:
    """Run each target in its own thread; return their results (re-raising the first error)."""
    results, errors = {}, []

    def call(name, target):
        try:
            results[name] = target()
        except BaseException as error:  # noqa: BLE001 - reported in the main thread
            errors.append(error)

    threads = [threading.Thread(target=call, args=item) for item in targets.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    if errors:
        raise errors[0]
    assert not any(thread.is_alive() for thread in threads), "a thread did not finish"
    return results


def fresh(pipe, cls=None):
    """A pipeline sharing `pipe`'s models, with its own scheduler and tokenizers (both hold per-call state), in
    `pipe`'s dtype: without `dtype`, `from_pipe` casts the shared models to float32 in place, under running
    requests."""
    return (cls or type(pipe)).from_pipe(pipe, **per_request_components(pipe), dtype=pipe.dtype)


def per_request_components(pipe) -> dict:
    """Copies of the components a call changes: the scheduler (its steps) and the tokenizers (a fast tokenizer
    sets its padding and truncation on the shared backend before encoding, so a call in another thread can
    change them in between: `test_shared_tokenizers_...` below)."""
    names = ("scheduler", "tokenizer", "tokenizer_2")
    return {name: copy.deepcopy(getattr(pipe, name)) for name in names if getattr(pipe, name, None) is not None}


def float16_base(cls):
    """The tiny SDXL in float16, as a server loads it."""
    base = cls.from_pretrained(TINY_SDXL, local_files_only=True, dtype=torch.float16)
    base.set_progress_bar_config(disable=True)
    return base


@pytest.mark.slow  # whole pipelines in concurrent threads
def test_overlapping_pladis_and_stock_calls_give_their_solo_images_and_restore_the_unet():
    """The server pattern on a float16 base: each request makes its own pipeline with `from_pipe(..., dtype=
    base.dtype)` while other requests are in their denoising loops."""
    a = float16_base(PLADISStableDiffusionXLPipeline)
    options = {"num_inference_steps": 3, "output_type": "latent"}  # float16 VAE decoding is slow on CPU
    solo = {
        "a": run_pipe(a, pladis_scale=2.0, **options),
        "b": run_pipe(fresh(a), pladis_scale=1.0, pladis_alpha=2.0, **options),
        "stock": run_pipe(fresh(a, StableDiffusionXLPipeline), **options),
    }
    assert np.abs(solo["a"] - solo["stock"]).max() > 1e-3 and np.abs(solo["b"] - solo["a"]).max() > 1e-3
    before, hooks = processors_by_name(a.unet), dict(a.unet._forward_pre_hooks)

    # `a` starts first and ends first, while `b` and the stock call are still inside their denoising loops.
    a_running, others_running, a_done = threading.Event(), threading.Barrier(3, timeout=TIMEOUT), threading.Event()

    def in_loop(first: bool):
        def callback(pipeline, step, timestep, callback_kwargs):
            if step == 0:
                if first:
                    a_running.set()
                others_running.wait()  # all three calls are between their first and last U-Net call
                if not first:
                    assert a_done.wait(TIMEOUT)
            return callback_kwargs

        return callback

    def call_a():
        try:
            return run_pipe(a, pladis_scale=2.0, callback_on_step_end=in_loop(True), **options)
        finally:
            a_done.set()

    def after_a(target):
        def call():
            assert a_running.wait(TIMEOUT)
            return target()

        return call

    results = run_threads(
        {
            "a": call_a,
            "b": after_a(
                lambda: run_pipe(
                    fresh(a), pladis_scale=1.0, pladis_alpha=2.0, callback_on_step_end=in_loop(False), **options
                )
            ),
            "stock": after_a(
                lambda: run_pipe(fresh(a, StableDiffusionXLPipeline), callback_on_step_end=in_loop(False), **options)
            ),
        }
    )
    for name, image in solo.items():
        np.testing.assert_array_equal(results[name], image, err_msg=name)
    assert same_processor_objects(a.unet, before) and dict(a.unet._forward_pre_hooks) == hooks
    assert {a.unet.dtype, a.vae.dtype, a.text_encoder.dtype} == {torch.float16}
    np.testing.assert_array_equal(run_pipe(fresh(a, StableDiffusionXLPipeline), **options), solo["stock"])


def test_concurrent_calls_on_a_bare_transformer_keep_their_own_settings_and_text_lengths():
    transformer = tiny_flux_transformer(guidance_embeds=False).eval()
    short, long = flux_inputs(transformer, seed=1), flux_inputs(transformer, seed=2)
    long["encoder_hidden_states"] = torch.cat([long["encoder_hidden_states"]] * 3, dim=1)  # 18 text tokens
    long["txt_ids"] = torch.zeros(18, 3)
    calls = {  # name: (apply_pladis options or None for stock, inputs)
        "single blocks, λ=2": ({"pladis_scale": 2.0, "pladis_single_blocks": True}, short),
        "double only, λ=1.5, α=2": ({"pladis_scale": 1.5, "pladis_alpha": 2.0}, long),
        "stock": (None, long),
    }
    before, hooks = processors_by_name(transformer), dict(transformer._forward_pre_hooks)

    def output(options, inputs):
        with torch.no_grad():
            if options is None:
                return [transformer(**inputs).sample for _ in range(3)]
            with apply_pladis(transformer, **options):
                inside.wait()  # every PLADIS call is installed before any of them runs
                return [transformer(**inputs).sample for _ in range(3)]

    inside = threading.Barrier(1, timeout=TIMEOUT)
    solo = {name: output(*call) for name, call in calls.items()}
    inside = threading.Barrier(2, timeout=TIMEOUT)
    results = run_threads({name: (lambda call=call: output(*call)) for name, call in calls.items()})
    for name in calls:
        for got, want in zip(results[name], solo[name], strict=True):
            assert torch.equal(got, want), name
    assert (solo["double only, λ=1.5, α=2"][0] - solo["stock"][0]).abs().max() > 1e-4
    assert same_processor_objects(transformer, before) and dict(transformer._forward_pre_hooks) == hooks


def test_a_processor_snapshot_taken_during_another_call_never_brings_its_pladis_back():
    """`swapped_attn_processors` (the attention-map recorder, the benchmark) saving the table while
    another call's PLADIS is installed, and restoring it after that call ended, gives the originals back."""
    from contextlib import ExitStack

    from attention import swapped_attn_processors
    from tests.family_runs import build

    pipe = build("sd15")
    before = processors_by_name(pipe.unet)
    with ExitStack() as other_call:
        other_call.enter_context(apply_pladis(pipe, 2.0))
        snapshot = swapped_attn_processors(pipe.unet, {})
        snapshot.__enter__()
    snapshot.__exit__(None, None, None)  # the snapshot ends after the PLADIS call it saw
    assert same_processor_objects(pipe.unet, before)


GUIDED_CALLS = {  # overlapping guided calls on one U-Net: their own guidance, layers, PLADIS and image size
    "seg": {"seg_scale": 3.0, "seg_blur_sigma": 1.0, "seg_applied_layers": ["mid"], "height": 64, "width": 48},
    "pag": {"pag_scale": 2.0, "pag_applied_layers": ["down_blocks.2"], "pladis_scale": 2.0},
}


@pytest.mark.slow  # whole pipelines in concurrent threads
@pytest.mark.parametrize("first", ["seg", "pag"])
def test_overlapping_seg_and_pag_calls_on_a_shared_unet_each_get_their_own_perturbation(first):
    """Two PAG-pipeline calls (SEG and PAG+PLADIS) and a stock call overlap on one U-Net: the first guided call
    starts its loop, the second starts while it runs, the first ends while the others are mid-loop. Each gives
    its solo image, and the U-Net ends with its own processors and hooks (diffusers' PAG loop restores the table
    it saved when its loop started, which used to leave the first call's SEG processor on the U-Net)."""
    second = "pag" if first == "seg" else "seg"
    pipes = {first: PLADISStableDiffusionXLSEGPipeline.from_pretrained(TINY_SDXL, local_files_only=True)}
    pipes[first].set_progress_bar_config(disable=True)
    pipes[second], pipes["stock"] = fresh(pipes[first]), fresh(pipes[first], StableDiffusionXLPipeline)
    unet = pipes[first].unet
    options = {"num_inference_steps": 3}
    solo = {name: run_pipe(pipe, **GUIDED_CALLS.get(name, {}), **options) for name, pipe in pipes.items()}
    for name, guided in GUIDED_CALLS.items():  # each guidance really acts
        size = {key: guided[key] for key in ("height", "width") if key in guided}
        assert np.abs(solo[name] - run_pipe(pipes["stock"], **size, **options)).max() > 1e-3
    before, hooks = processors_by_name(unet), dict(unet._forward_pre_hooks)

    first_running, others_running, first_done = (
        threading.Event(),
        threading.Barrier(3, timeout=TIMEOUT),
        threading.Event(),
    )

    def in_loop(is_first: bool):
        def callback(pipeline, step, timestep, callback_kwargs):
            if step == 0:
                if is_first:
                    first_running.set()
                others_running.wait()
                if not is_first:
                    assert first_done.wait(TIMEOUT)
            return callback_kwargs

        return callback

    def call(name):
        def run():
            if name != first:
                assert first_running.wait(TIMEOUT)
            try:
                return run_pipe(
                    pipes[name], callback_on_step_end=in_loop(name == first), **GUIDED_CALLS.get(name, {}), **options
                )
            finally:
                if name == first:
                    first_done.set()

        return run

    results = run_threads({name: call(name) for name in pipes})
    for name, image in solo.items():
        np.testing.assert_array_equal(results[name], image, err_msg=name)
    assert same_processor_objects(unet, before) and dict(unet._forward_pre_hooks) == hooks
    np.testing.assert_array_equal(run_pipe(pipes["stock"], **options), solo["stock"])


@pytest.mark.slow  # whole pipelines in concurrent threads
@pytest.mark.parametrize("tokenizers", ["shared", "per request"])
def test_shared_tokenizers_are_the_order_dependence_of_concurrent_flux_requests(tokenizers):
    """FLUX requests in threads differed from their solo images now and then (4.8e-7 through CLIP's pooled
    embedding, up to 0.16 through T5's text length). The cause is not the attention: a fast tokenizer sets
    padding and truncation on its shared backend, then encodes. Here request `a` is held between the two in its
    T5 call that pads to the maximum length while request `b` runs whole (its last tokenizer call pads to the
    longest), so with shared tokenizers `a` encodes with `b`'s padding; with per-request tokenizers (`fresh`)
    both give their solo images."""
    base = PLADISFluxPipeline.from_pretrained(TINY_FLUX_SCHNELL, local_files_only=True)
    base.set_progress_bar_config(disable=True)
    share = {} if tokenizers == "per request" else {"tokenizer": base.tokenizer, "tokenizer_2": base.tokenizer_2}
    a, b = (PLADISFluxPipeline.from_pipe(fresh(base), **share) for _ in range(2))
    calls = {"a": (a, {"pladis_scale": 2.0}), "b": (b, {"pladis_scale": 1.5, "pladis_alpha": 2.0})}
    solo = {name: run_pipe(pipe, **options) for name, (pipe, options) in calls.items()}
    a_held, b_done = threading.Event(), threading.Event()
    encode_settings = a.tokenizer_2.set_truncation_and_padding

    def hold_a_once(*args, padding_strategy, **kwargs):
        encode_settings(*args, padding_strategy=padding_strategy, **kwargs)
        if threading.current_thread().name == "a" and padding_strategy.value == "max_length" and not a_held.is_set():
            a_held.set()
            assert b_done.wait(TIMEOUT)

    a.tokenizer_2.set_truncation_and_padding = hold_a_once
    results = {}

    def request(name):
        if name == "b":
            assert a_held.wait(TIMEOUT)
        results[name] = run_pipe(calls[name][0], **calls[name][1])
        if name == "b":
            b_done.set()

    threads = [threading.Thread(target=request, args=(name,), name=name) for name in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    assert sorted(results) == ["a", "b"] and np.array_equal(results["b"], solo["b"])
    assert np.array_equal(results["a"], solo["a"]) == (tokenizers == "per request")
