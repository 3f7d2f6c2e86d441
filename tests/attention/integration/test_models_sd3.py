"""`PLADISJointAttnProcessor` and `apply_pladis` on SD3 / SD3.5: the processor against stock
`JointAttnProcessor2_0` whose SDPA is a float64 materialised text-block rule with image tokens FIRST,
and the pipeline: identity at λ = 0, PLADIS on the joint `attn` only (not SD3.5's self-attention `attn2`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers.models import attention_processor
from diffusers.models.attention_processor import Attention, JointAttnProcessor2_0

from attention import PLADISJointAttnProcessor, apply_pladis
from attention.kernels.reference import reference_text_block
from tests.family_runs import build, layers_of_type, one_thread, processors_seen, run_family  # noqa: F401
from tests.tiny import CallCounter, processors_by_name, same_processor_objects


def reference_joint_sdpa(text_length: int, scale: float, alpha: float, text_first: bool = False):
    """Float64 SDPA over `[img ; txt]` (or `[txt ; img]`) whose image-query × text-key block is
    `m·[λ·entmax_α(z_txt) + (1 − λ)·softmax(z_txt)]`, m = the dense text mass of that query
    (`attention.kernels.reference`)."""

    def sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, **unused):
        return reference_text_block(
            query, key, value, text_length, scale, alpha, text_first=text_first, attn_mask=attn_mask, float64=True
        )

    return sdpa


def joint_attention(context_pre_only: bool) -> Attention:
    """An SD3.5-style joint attention layer (as `JointTransformerBlock` builds it), random weights."""
    torch.manual_seed(0)
    return Attention(
        query_dim=32,
        cross_attention_dim=None,
        added_kv_proj_dim=32,
        dim_head=8,
        heads=4,
        out_dim=32,
        context_pre_only=context_pre_only,
        bias=True,
        processor=JointAttnProcessor2_0(),
        qk_norm="rms_norm",
        eps=1e-6,
    ).eval()


def stock_output(monkeypatch, attn, sdpa, hidden, context):
    with monkeypatch.context() as patch:
        if sdpa is not None:
            patch.setattr(attention_processor.F, "scaled_dot_product_attention", sdpa)
        return JointAttnProcessor2_0()(attn, hidden, context)


@pytest.mark.parametrize("context_pre_only", [False, True])
@pytest.mark.parametrize("alpha", [1.5, 2.0])
@pytest.mark.parametrize("scale", [0.5, 2.0])
def test_processor_matches_materialised_image_first_rule(monkeypatch, context_pre_only, alpha, scale):
    attn = joint_attention(context_pre_only)
    generator = torch.Generator().manual_seed(int(scale * 10) + int(alpha * 7))
    hidden, context = torch.randn(2, 24, 32, generator=generator), torch.randn(2, 9, 32, generator=generator) * 3
    with torch.no_grad():
        image, text = PLADISJointAttnProcessor(scale, alpha)(attn, hidden, context)
        image_first, text_first = reference_joint_sdpa(9, scale, alpha), reference_joint_sdpa(9, scale, alpha, True)
        expected_image, expected_text = stock_output(monkeypatch, attn, image_first, hidden, context)
        wrong_order, _ = stock_output(monkeypatch, attn, text_first, hidden, context)
        stock_image, stock_text = stock_output(monkeypatch, attn, None, hidden, context)
    torch.testing.assert_close(image, expected_image, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(text, expected_text, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(text, stock_text, atol=2e-5, rtol=1e-4)  # text-query rows stay dense
    assert (image - stock_image).abs().max() > 1e-3
    assert (image - wrong_order).abs().max() > 1e-3  # the tolerance would catch the FLUX (text-first) order


def test_processor_without_text_is_plain_attention():
    attn = joint_attention(False)
    hidden = torch.randn(2, 24, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(
            PLADISJointAttnProcessor(2.0)(attn, hidden), JointAttnProcessor2_0()(attn, hidden), atol=1e-6, rtol=1e-5
        )


@pytest.fixture(scope="module", params=["sd3", "sd35"])
def family(request):
    return request.param


@pytest.fixture(scope="module")
def pipe(family):
    return build(family)


def test_scale_zero_is_bit_identical_to_the_stock_pipeline(pipe, family):
    stock = run_family(pipe, family)
    with apply_pladis(pipe, 0.0):
        np.testing.assert_array_equal(run_family(pipe, family), stock)


@pytest.mark.parametrize("alpha", [1.5, 2.0])
def test_positive_scale_changes_the_image(pipe, family, alpha):
    stock = run_family(pipe, family)
    with apply_pladis(pipe, 2.0, alpha):
        boosted = run_family(pipe, family)
    assert np.isfinite(boosted).all() and np.abs(boosted - stock).max() > 1e-3


def test_pladis_goes_on_the_joint_attention_only(pipe, family):
    with apply_pladis(pipe, 2.0), processors_seen(pipe.transformer) as seen:
        run_family(pipe, family)
    assert layers_of_type(seen, PLADISJointAttnProcessor) == {"transformer_blocks.0.attn", "transformer_blocks.1.attn"}
    self_attention = {"transformer_blocks.0.attn2"} if family == "sd35" else set()
    assert layers_of_type(seen, JointAttnProcessor2_0) == self_attention  # SD3.5's attn2 is left alone
    assert pipe.transformer.transformer_blocks[1].attn.context_pre_only  # the last block is covered too


def test_transformer_calls_unchanged_and_processors_restored(pipe, family):
    before = processors_by_name(pipe.transformer)
    counter = CallCounter(pipe.transformer)
    run_family(pipe, family, num_inference_steps=3)
    with apply_pladis(pipe, 2.0):
        run_family(pipe, family, num_inference_steps=3)
    counter.remove()
    assert counter.count == 2 * 3  # CFG: one batched [uncond, cond] call per step
    assert same_processor_objects(pipe.transformer, before)


def test_pag_on_the_joint_attention_raises_instead_of_replacing_pladis(pipe, family):
    """SD3's PAG pipelines give PAG's own processors to joint attention layers during the call: PLADIS says so
    up front (naming the layers) instead of running without PLADIS there, and changes nothing."""
    from diffusers import StableDiffusion3PAGPipeline

    pag = StableDiffusion3PAGPipeline.from_pipe(pipe, pag_applied_layers=["blocks.1"])
    before = processors_by_name(pag.transformer)
    with pytest.raises(ValueError, match=r"PAG on StableDiffusion3PAGPipeline .*transformer_blocks\.1\.attn"):
        with apply_pladis(pag, 2.0):
            pass
    assert same_processor_objects(pag.transformer, before)
    stock = run_family(pipe, family)
    with apply_pladis(pipe, 2.0):  # the pipeline it came from still takes PLADIS
        assert np.abs(run_family(pipe, family) - stock).max() > 1e-3


def test_pag_on_self_attention_keeps_pladis_on_cross_attention():
    """SDXL-style PAG (on `attn1`) and PLADIS (on `attn2`) share no layer: `apply_pladis` accepts the PAG pipeline."""
    from diffusers import StableDiffusionPAGPipeline

    from attention import PLADISAttnProcessor

    pag = StableDiffusionPAGPipeline.from_pipe(build("sd15"), pag_applied_layers=["mid"])
    with apply_pladis(pag, 2.0), processors_seen(pag.unet) as seen:
        run_family(pag, "sd15", pag_scale=3.0)
    layers = {name[: -len(".processor")]: type(processor).__name__ for name, processor in seen.items()}
    assert layers_of_type(seen, PLADISAttnProcessor) == {name for name in layers if name.endswith("attn2")}
    pag_layers = {name for name, kind in layers.items() if kind.startswith("PAG")}
    assert pag_layers and all(name.startswith("mid_block") and name.endswith("attn1") for name in pag_layers)
