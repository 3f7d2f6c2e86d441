"""PLADIS on the newer families (FLUX.2, Chroma, Qwen-Image, Wan 2.x text- and image-to-video, LTX-Video,
Z-Image), on tiny denoisers of the real classes: the whole denoiser output against an independent float64
materialised formulation (the `entmax` package) with a batch whose second sample has padded text, λ = 0
bit-identical, PLADIS on exactly the layers the family record names, masked text keys weighing nothing, finite
bfloat16 runs, and every module ending as it started after a normal exit and after an exception."""

from __future__ import annotations

import copy

import pytest
import torch

from attention import PLADISProcessor, apply_pladis
from tests.family_runs import one_thread  # noqa: F401
from tests.materialised_reference import as_double, materialised_pladis, relative_error
from tests.tiny_denoisers import DENOISERS, PADDING

SETTINGS = [(2.0, 1.5), (1.5, 2.0)]  # (λ, α): entmax15 and sparsemax


@pytest.fixture(scope="module", params=sorted(DENOISERS))
def family(request):
    return request.param


@pytest.fixture(scope="module")
def model(family):
    return DENOISERS[family].build()


def processor_objects(model) -> dict:
    """Every attention module's processor object (Z-Image has no `attn_processors` table)."""
    return {name: module.processor for name, module in model.named_modules() if hasattr(module, "processor")}


def run(family, model, inputs, **options):
    tiny = DENOISERS[family]
    with torch.no_grad():
        if not options:
            return tiny.output(model(**inputs))
        with apply_pladis(model, **options):
            return tiny.output(model(**inputs))


def reference(family, model, inputs, scale, alpha, single_blocks=False):
    tiny = DENOISERS[family]
    double = copy.deepcopy(model).double()
    with (
        torch.no_grad(),
        materialised_pladis(double, tiny.module, tiny.layouts(model, inputs, single_blocks), scale, alpha),
    ):
        return tiny.output(double(**as_double(inputs)))


@pytest.mark.parametrize("scale,alpha", SETTINGS)
def test_whole_output_matches_the_materialised_reference(family, model, scale, alpha):
    inputs = DENOISERS[family].inputs(0)
    ours = run(family, model, inputs, pladis_scale=scale, pladis_alpha=alpha)
    want = reference(family, model, inputs, scale, alpha)
    assert relative_error(ours, want) <= 1e-4
    assert relative_error(run(family, model, inputs), want) > 1e-3  # the rule really acted (a no-op would fail)


@pytest.mark.parametrize("scale,alpha", SETTINGS)
def test_single_stream_blocks_match_the_reference_when_asked_for(family, model, scale, alpha):
    if not DENOISERS[family].has_single_blocks:
        with pytest.raises(ValueError, match="no single-stream block"):
            run(family, model, DENOISERS[family].inputs(0), pladis_scale=scale, pladis_single_blocks=True)
        return
    inputs = DENOISERS[family].inputs(1)
    ours = run(family, model, inputs, pladis_scale=scale, pladis_alpha=alpha, pladis_single_blocks=True)
    assert relative_error(ours, reference(family, model, inputs, scale, alpha, single_blocks=True)) <= 1e-4
    assert relative_error(ours, run(family, model, inputs, pladis_scale=scale, pladis_alpha=alpha)) > 1e-4


def test_zero_scale_is_bit_identical_to_stock(family, model):
    inputs = DENOISERS[family].inputs(2)
    assert torch.equal(run(family, model, inputs, pladis_scale=0.0), run(family, model, inputs))


def test_pladis_goes_on_exactly_the_recorded_layers(family, model):
    tiny, inputs = DENOISERS[family], DENOISERS[family].inputs(3)
    before = processor_objects(model)
    seen = {}
    handle = model.register_forward_pre_hook(lambda module, args: seen.update(processor_objects(module)))
    try:
        run(family, model, inputs, pladis_scale=2.0)
    finally:
        handle.remove()
    pladis = {name for name, processor in seen.items() if isinstance(processor, PLADISProcessor)}
    assert pladis == set(tiny.layouts(model, inputs, False))
    assert all(seen[name] is before[name] for name in seen if name not in pladis)  # e.g. Z-Image's refiners
    assert all(seen[name].original is before[name] for name in pladis)


def test_padded_text_keys_weigh_nothing(family, model):
    """Changing the padded text of the second sample leaves its output as it was (masked keys weigh 0 in both
    maps); Z-Image's batch padding: each sample's output is the one it gets alone."""
    tiny = DENOISERS[family]
    if not tiny.has_text_mask:
        pytest.skip(f"{family} takes no text mask")
    inputs = tiny.inputs(4)
    padded = run(family, model, inputs, pladis_scale=2.0)
    if family == "z-image":
        for sample in range(2):
            alone = {
                **inputs,
                "x": inputs["x"][sample : sample + 1],
                "t": inputs["t"][sample : sample + 1],
                "cap_feats": inputs["cap_feats"][sample : sample + 1],
            }
            torch.testing.assert_close(
                run(family, model, alone, pladis_scale=2.0)[0], padded[sample], atol=1e-5, rtol=1e-5
            )
        return
    changed = dict(inputs, encoder_hidden_states=inputs["encoder_hidden_states"].clone())
    changed["encoder_hidden_states"][1, -PADDING:] += 5.0
    other = run(family, model, changed, pladis_scale=2.0)
    torch.testing.assert_close(other[1], padded[1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("raise_inside", [False, True])
def test_every_module_ends_as_it_started(family, model, raise_inside):
    tiny, inputs = DENOISERS[family], DENOISERS[family].inputs(5)
    before, hooks = processor_objects(model), dict(model._forward_pre_hooks)
    stock = run(family, model, inputs)
    options = {"pladis_single_blocks": True} if tiny.has_single_blocks else {}
    try:
        with torch.no_grad(), apply_pladis(model, 2.0, **options):
            tiny.output(model(**inputs))
            if raise_inside:
                raise LookupError("inside")
    except LookupError:
        assert raise_inside
    now = processor_objects(model)
    assert now.keys() == before.keys() and all(now[name] is before[name] for name in before)
    assert dict(model._forward_pre_hooks) == hooks
    assert torch.equal(run(family, model, inputs), stock)


def as_dtype(value, dtype):
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, list):
        return [as_dtype(item, dtype) for item in value]
    return value


def test_bfloat16_output_is_finite_and_drifts_from_float32_no_more_than_stock(family, model):
    inputs = DENOISERS[family].inputs(6)
    half, half_inputs = (
        copy.deepcopy(model).to(torch.bfloat16),
        {n: as_dtype(v, torch.bfloat16) for n, v in inputs.items()},
    )
    ours = run(family, half, half_inputs, pladis_scale=2.0)
    assert ours.dtype == torch.bfloat16 and torch.isfinite(ours).all()
    stock_drift = relative_error(run(family, half, half_inputs), run(family, model, inputs))  # the model's own
    assert relative_error(ours, run(family, model, inputs, pladis_scale=2.0)) < stock_drift + 2e-2
