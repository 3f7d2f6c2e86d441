"""When and where PLADIS acts: step windows (`pladis_start`/`pladis_stop`, diffusers' guider semantics, the step
read from the pipeline's scheduler) and layer selection (`pladis_layers`, `pag_applied_layers` semantics on the
family's text-attention names). Each windowed or layer-restricted image equals the one made by switching
hand-made fixed-λ processors on exactly those steps and layers from the pipeline's step callback."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from diffusers import (
    ClassifierFreeGuidance,
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
    UniPCMultistepScheduler,
)

from attention import PLADISProcessor, apply_pladis, pladis_processors
from attention.settings import PLADISSettings
from scripts.cli.assets import TINY_SDXL
from scripts.dev.build_tiny_assets import build_tiny_flux
from tests.attention.integration.test_concurrency import TIMEOUT, fresh, run_threads
from tests.family_runs import one_thread  # noqa: F401
from tests.tiny import processors_by_name, run_pipe, same_processor_objects

STEPS = 4
SCALE = 2.0


@pytest.fixture(scope="module")
def stock():
    pipe = StableDiffusionXLPipeline.from_pretrained(TINY_SDXL, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@contextmanager
def pladis_layers_per_call(model: torch.nn.Module) -> Iterator[list[set[str]]]:
    """Yield a list that gets, for each forward call of `model`, the names of the layers that ran PLADIS in it."""
    calls: list[set[str]] = []

    def record(module, args, output) -> None:
        calls.append(
            {
                name[: -len(".processor")]
                for name, processor in module.attn_processors.items()
                if isinstance(processor, PLADISProcessor) and processor.current_call() is not None
            }
        )

    handle = model.register_forward_hook(record)
    try:
        yield calls
    finally:
        handle.remove()


def switched_by_callback(pipe, steps: set[int], layers: set[str] | None = None, **options) -> np.ndarray:
    """The image with fixed-λ PLADIS processors on `layers` (default: every cross-attention layer) during the
    loop iterations in `steps`, switched from the step callback: independent of the scheduler's step index."""
    fixed = {
        name: p for name, p in pladis_processors(pipe.unet, SCALE, 1.5).items() if layers is None or name in layers
    }
    original = dict(pipe.unet.attn_processors)

    def table(step: int) -> dict:
        return {
            name: fixed[name[: -len(".processor")]] if step in steps and name[: -len(".processor")] in fixed else p
            for name, p in original.items()
        }

    def switch(pipeline, step, timestep, callback_kwargs):
        pipeline.unet.set_attn_processor(table(step + 1))
        return callback_kwargs

    pipe.unet.set_attn_processor(table(0))
    try:
        return run_pipe(pipe, callback_on_step_end=switch, **options)
    finally:
        pipe.unet.set_attn_processor(original)


@pytest.mark.parametrize("start", [0.0, 0.1, 0.25, 0.3, 0.5, 0.9])
@pytest.mark.parametrize("stop", [0.0, 0.3, 0.5, 0.75, 0.99, 1.0])
def test_window_semantics_are_those_of_diffusers_guiders(start, stop):
    if stop < start:
        with pytest.raises(ValueError, match=r"pladis_start and pladis_stop must satisfy.*pladis_start=.*pladis_stop="):
            PLADISSettings(SCALE, pladis_start=start, pladis_stop=stop)
        return
    settings = PLADISSettings(SCALE, pladis_start=start, pladis_stop=stop)
    guider = ClassifierFreeGuidance(guidance_scale=5.0, start=start, stop=stop)
    for steps in (1, 3, 4, 7, 10, 25):
        for step in range(steps):
            guider.set_state(step=step, num_inference_steps=steps, timestep=None)
            assert settings.acts_on_step(step, steps) == guider._is_cfg_enabled(), (start, stop, step, steps)


@pytest.mark.slow  # per scheduler
@pytest.mark.parametrize(
    "scheduler,start,stop,steps",
    [
        (EulerDiscreteScheduler, 0.25, 0.75, {1, 2}),
        (EulerDiscreteScheduler, 0.3, 0.7, {1}),
        (EulerDiscreteScheduler, 0.5, 1.0, {2, 3}),
        (EulerAncestralDiscreteScheduler, 0.0, 0.5, {0, 1}),
        (DPMSolverMultistepScheduler, 0.25, 0.75, {1, 2}),
        (UniPCMultistepScheduler, 0.5, 1.0, {2, 3}),
    ],
)
def test_window_acts_on_exactly_its_steps(stock, scheduler, start, stop, steps):
    pipe = StableDiffusionXLPipeline.from_pipe(stock, scheduler=scheduler.from_config(stock.scheduler.config))
    with pladis_layers_per_call(pipe.unet) as calls, apply_pladis(pipe, SCALE, pladis_start=start, pladis_stop=stop):
        windowed = run_pipe(pipe, num_inference_steps=STEPS)
    assert [bool(layers) for layers in calls] == [step in steps for step in range(STEPS)]
    np.testing.assert_array_equal(windowed, switched_by_callback(pipe, steps, num_inference_steps=STEPS))


def test_an_empty_window_is_the_stock_image_and_the_full_window_is_plain_pladis(stock):
    with apply_pladis(stock, SCALE, pladis_start=0.5, pladis_stop=0.5):
        empty = run_pipe(stock, num_inference_steps=STEPS)
    with apply_pladis(stock, SCALE, pladis_start=0.0, pladis_stop=1.0):
        full = run_pipe(stock, num_inference_steps=STEPS)
    with apply_pladis(stock, SCALE):
        plain = run_pipe(stock, num_inference_steps=STEPS)
    np.testing.assert_array_equal(empty, run_pipe(stock, num_inference_steps=STEPS))
    np.testing.assert_array_equal(full, plain)


@pytest.mark.slow
def test_img2img_windows_count_the_steps_the_call_takes(stock):
    """strength 0.5 of 8 steps runs 4; the window (0, 0.5) is its first 2 (the scheduler's begin_index)."""
    pipe = StableDiffusionXLImg2ImgPipeline.from_pipe(stock)
    image = np.full((64, 64, 3), 0.5, dtype=np.float32)
    options = {"image": image, "strength": 0.5, "num_inference_steps": 8}
    with pladis_layers_per_call(pipe.unet) as calls, apply_pladis(pipe, SCALE, pladis_start=0.0, pladis_stop=0.5):
        windowed = run_pipe(pipe, **options)
    assert [bool(layers) for layers in calls] == [True, True, False, False]
    np.testing.assert_array_equal(windowed, switched_by_callback(pipe, {0, 1}, **options))


@pytest.mark.parametrize("scheduler", [DDIMScheduler, DDPMScheduler])
def test_a_window_with_a_scheduler_without_step_index_is_refused_by_name(stock, scheduler):
    pipe = StableDiffusionXLPipeline.from_pipe(stock, scheduler=scheduler.from_config(stock.scheduler.config))
    before = processors_by_name(pipe.unet)
    with pytest.raises(ValueError, match=f"pladis_start/pladis_stop need a scheduler.*{scheduler.__name__}"):
        with apply_pladis(pipe, SCALE, pladis_stop=0.5):
            pytest.fail("the body must not run")
    assert same_processor_objects(pipe.unet, before)
    with apply_pladis(pipe, SCALE):  # without a window any scheduler works
        assert np.isfinite(run_pipe(pipe, num_inference_steps=2)).all()


@pytest.mark.slow
def test_a_bare_denoiser_takes_its_window_from_the_scheduler_it_is_given(stock):
    with pytest.raises(ValueError, match="bare UNet2DConditionModel need the steps of its loop: pass scheduler="):
        with apply_pladis(stock.unet, SCALE, pladis_stop=0.5):
            pytest.fail("the body must not run")
    with apply_pladis(stock.unet, SCALE, pladis_start=0.5, scheduler=stock.scheduler):
        bare = run_pipe(stock, num_inference_steps=STEPS)
    with apply_pladis(stock, SCALE, pladis_start=0.5):
        through_pipeline = run_pipe(stock, num_inference_steps=STEPS)
    np.testing.assert_array_equal(bare, through_pipeline)


def cross_attention_names(unet) -> list[str]:
    return [name[: -len(".processor")] for name in unet.attn_processors if ".attn2." in name]


@pytest.mark.slow
@pytest.mark.parametrize(
    "ids,prefixes",
    [
        ("mid", ("mid_block.",)),
        (["down_blocks.2", "up_blocks.0.attentions.1"], ("down_blocks.2.", "up_blocks.0.attentions.1.")),
        (["up_blocks"], ("up_blocks.",)),
    ],
)
def test_layer_ids_choose_the_cross_attention_layers_they_name(stock, ids, prefixes):
    chosen = {name for name in cross_attention_names(stock.unet) if name.startswith(prefixes)}
    assert 0 < len(chosen) < len(cross_attention_names(stock.unet))
    with pladis_layers_per_call(stock.unet) as calls, apply_pladis(stock, SCALE, pladis_layers=ids):
        restricted = run_pipe(stock)
    assert calls and all(layers == chosen for layers in calls)
    np.testing.assert_array_equal(restricted, switched_by_callback(stock, {0, 1}, chosen))


@pytest.mark.slow
def test_layers_and_window_combine(stock):
    chosen = {name for name in cross_attention_names(stock.unet) if name.startswith("mid_block.")}
    with apply_pladis(stock, SCALE, pladis_layers=["mid"], pladis_start=0.5):
        combined = run_pipe(stock, num_inference_steps=STEPS)
    np.testing.assert_array_equal(combined, switched_by_callback(stock, {2, 3}, chosen, num_inference_steps=STEPS))


@pytest.fixture(scope="module")
def flux():
    pipe = build_tiny_flux(guidance_embeds=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize(
    "ids,chosen",
    [
        ("single_transformer_blocks", {"single_transformer_blocks.0.attn", "single_transformer_blocks.1.attn"}),
        ("transformer_blocks.1", {"transformer_blocks.1.attn", "single_transformer_blocks.1.attn"}),  # a search
        ("^transformer_blocks.1", {"transformer_blocks.1.attn"}),
        (
            ["^transformer_blocks.0", "single_transformer_blocks.1"],
            {"transformer_blocks.0.attn", "single_transformer_blocks.1.attn"},
        ),
    ],
)
def test_flux_layer_ids_name_double_and_single_stream_blocks(flux, ids, chosen):
    with pladis_layers_per_call(flux.transformer) as calls, apply_pladis(flux, SCALE, pladis_layers=ids):
        run_pipe(flux, max_sequence_length=16, guidance_scale=0.0)
    assert calls and all(layers == chosen for layers in calls)


def test_flux_layer_ids_and_single_blocks_are_one_choice(flux):
    with pytest.raises(ValueError, match="give pladis_layers or pladis_single_blocks=True, not both"):
        with apply_pladis(flux, SCALE, pladis_layers="transformer_blocks", pladis_single_blocks=True):
            pytest.fail("the body must not run")


def test_choosing_every_flux_layer_by_id_is_the_single_blocks_run_and_each_pair_differs(flux):
    names = [
        "^transformer_blocks.0",
        "^transformer_blocks.1",
        "single_transformer_blocks.0",
        "single_transformer_blocks.1",
    ]
    options = {"max_sequence_length": 16, "guidance_scale": 0.0}
    with apply_pladis(flux, SCALE, pladis_single_blocks=True):
        everything = run_pipe(flux, **options)
    with apply_pladis(flux, SCALE, pladis_layers=names):
        np.testing.assert_array_equal(run_pipe(flux, **options), everything)
    images = []
    for pair in itertools.combinations(names, 2):
        with apply_pladis(flux, SCALE, pladis_layers=list(pair)):
            images.append(run_pipe(flux, **options))
    assert all(np.abs(a - b).max() > 0 for a, b in itertools.combinations(images, 2))


@pytest.mark.slow  # concurrent threads
def test_overlapping_calls_keep_their_own_windows_and_layers(stock):
    """Two calls on one U-Net (from_pipe, a scheduler each) in threads, each in the other's loop: each gets its
    own window and layers, as alone. (The prompt is encoded beforehand: transformers' tokenizers are not safe to
    share between threads.)"""
    pipes = {"early mid": fresh(stock), "late up": fresh(stock)}
    settings = {
        "early mid": {"pladis_stop": 0.5, "pladis_layers": "mid"},
        "late up": {"pladis_start": 0.5, "pladis_layers": "up_blocks"},
    }
    names = ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds")
    embeds = dict(zip(names, stock.encode_prompt("a photo of a red cube"), strict=True))

    def call(name, callback=None):
        with apply_pladis(pipes[name], SCALE, **settings[name]):
            return pipes[name](
                **embeds,
                num_inference_steps=STEPS,
                height=64,
                width=64,
                output_type="np",
                generator=torch.Generator("cpu").manual_seed(0),
                callback_on_step_end=callback,
            ).images

    solo = {name: call(name) for name in pipes}
    both_in_loop = threading.Barrier(2, timeout=TIMEOUT)

    def meet(pipeline, step, timestep, callback_kwargs):
        if step in (0, 2):
            both_in_loop.wait()
        return callback_kwargs

    results = run_threads({name: (lambda name=name: call(name, meet)) for name in pipes})
    for name in pipes:
        np.testing.assert_array_equal(results[name], solo[name], err_msg=name)
    assert np.abs(solo["early mid"] - solo["late up"]).max() > 1e-4


@pytest.mark.slow  # torch.compile
def test_a_window_under_torch_compile_has_no_graph_break_and_two_graphs():
    """The step is read in the denoiser's pre-hook (host integers of the scheduler); the compiled transformer
    runs PLADIS exactly on the window's steps (1, 2 of 4) with one graph for each side of the window."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from torch._dynamo.utils import counters

    from scripts.dev.build_tiny_assets import tiny_flux_transformer
    from tests.attention.integration.test_install import flux_inputs

    transformer = tiny_flux_transformer(guidance_embeds=False).eval()
    inputs = flux_inputs(transformer)
    scheduler = FlowMatchEulerDiscreteScheduler()
    scheduler.set_timesteps(4)
    with torch.no_grad():
        stock = transformer(**inputs).sample
        with apply_pladis(transformer, SCALE):
            eager = transformer(**inputs).sample
        compiled = torch.compile(transformer, backend="eager")
        counters.clear()
        outputs = []
        with apply_pladis(compiled, SCALE, pladis_start=0.25, pladis_stop=0.75, scheduler=scheduler):
            for step in range(4):
                scheduler._step_index = step  # where the scheduler stands at this step's denoiser call
                outputs.append(compiled(**inputs).sample)
    assert sum(counters["graph_break"].values()) == 0 and counters["stats"]["unique_graphs"] == 2
    for step, output in enumerate(outputs):
        torch.testing.assert_close(output, eager if step in (1, 2) else stock, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("scheduler", [EulerDiscreteScheduler, DPMSolverMultistepScheduler])
def test_placing_a_cuda_call_in_the_window_runs_no_tensor_op(scheduler):
    """The step is host state of the scheduler (`step_index`, `begin_index`, the length of its CUDA timesteps):
    no tensor op is dispatched, so no host-device sync (checked with fake CUDA tensors)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils._python_dispatch import TorchDispatchMode

    from attention.integration.call_context import PLADISCall
    from attention.integration.steps import scheduler_step_source

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(func)
            return func(*args, **(kwargs or {}))

    instance = scheduler()
    instance.set_timesteps(8)
    with FakeTensorMode():
        instance.timesteps = torch.empty(8, device="cuda")  # as set_timesteps(8, device="cuda") leaves them
        assert instance.timesteps.is_cuda
        settings = PLADISSettings(SCALE, pladis_start=0.25, pladis_stop=0.5)
        call = PLADISCall(None, settings, step=scheduler_step_source(instance))
        acting = []
        with Ops() as recorded:
            for step in range(8):
                instance._step_index = step if step else None
                call.start_denoiser_call()
                acting.append(call.acting)
    assert recorded.ops == []
    assert acting == [False, False, True, True, False, False, False, False]
