"""`apply_pladis` on whole tiny pipelines of the newer families (Chroma with its text mask and CFG, LTX-Video,
Wan 2.x text-to-video, FLUX.2 [klein]): λ = 0 is the stock pipeline bit for bit, λ > 0 changes the output with the
same number
of denoiser calls, and the transformer ends as it started, also when the denoising loop raises."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attention import apply_pladis
from tests.family_runs import one_thread  # noqa: F401
from tests.tiny import CallCounter, processors_by_name, same_processor_objects
from tests.tiny_pipelines import PIPELINES


@pytest.fixture(scope="module", params=sorted(PIPELINES))
def family(request):
    return request.param


@pytest.fixture(scope="module")
def pipe(family):
    pipe = PIPELINES[family][0]()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, family, **kwargs) -> np.ndarray:
    output = pipe(
        prompt="a photo of a red cube",
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
        **{**PIPELINES[family][1], **kwargs},
    )
    return np.asarray(output.frames if hasattr(output, "frames") else output.images)


def test_zero_scale_is_the_stock_pipeline_and_positive_scale_changes_it(pipe, family):
    counter = CallCounter(pipe.transformer)
    stock = generate(pipe, family)
    stock_calls = counter.count
    with apply_pladis(pipe, 0.0):
        np.testing.assert_array_equal(generate(pipe, family), stock)
    with apply_pladis(pipe, 2.0):
        changed = generate(pipe, family)
    counter.remove()
    assert counter.count == 3 * stock_calls  # PLADIS adds no model evaluation
    assert np.isfinite(changed).all() and np.abs(changed - stock).max() > 1e-3


def test_transformer_ends_as_it_started_also_when_the_loop_raises(pipe, family):
    before, hooks = processors_by_name(pipe.transformer), dict(pipe.transformer._forward_pre_hooks)
    stock = generate(pipe, family)

    def fail(pipeline, step, timestep, callback_kwargs):
        assert not same_processor_objects(pipeline.transformer, before)  # PLADIS is in place mid-loop
        raise RuntimeError("boom in the denoising loop")

    with pytest.raises(RuntimeError, match="boom"):
        with apply_pladis(pipe, 2.0):
            generate(pipe, family, callback_on_step_end=fail)
    assert same_processor_objects(pipe.transformer, before)
    assert dict(pipe.transformer._forward_pre_hooks) == hooks
    np.testing.assert_array_equal(generate(pipe, family), stock)
