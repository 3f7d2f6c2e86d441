"""Models PLADIS cannot handle fail with an error naming the model (or the processor and layer), never a
silent no-op, and leave the model as it was: no text attention, unknown attention processors, IP-Adapters."""

from __future__ import annotations

import types

import pytest
import torch
from diffusers import (
    AuraFlowTransformer2DModel,
    DDPMPipeline,
    DDPMScheduler,
    DiTTransformer2DModel,
    HunyuanDiT2DModel,
    UNet2DConditionModel,
    UNet2DModel,
)
from diffusers.models.attention_processor import AttnProcessor2_0, IPAdapterAttnProcessor2_0

from attention import apply_pladis
from tests.family_runs import build, one_thread, run_family  # noqa: F401
from tests.tiny import CallCounter, processors_by_name, same_processor_objects


def pladis_error(pipe, error: type, match: str) -> None:
    """`apply_pladis(pipe, 2.0)` raises `error` matching `match` before its body runs."""
    with pytest.raises(error, match=match):
        with apply_pladis(pipe, 2.0):
            pytest.fail("the body must not run")


def test_unet_without_cross_attention_is_refused_by_class_name():
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16),
        norm_num_groups=8,
        layers_per_block=1,
        cross_attention_dim=8,
        down_block_types=("AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D"),
        mid_block_type=None,
    )
    assert unet.attn_processors  # it has (self-)attention, just no text attention
    pladis_error(types.SimpleNamespace(unet=unet), ValueError, "no cross-attention .* in UNet2DConditionModel")


def test_unconditional_unet_pipeline_is_refused_by_class_name():
    unet = UNet2DModel(
        block_out_channels=(8, 16),
        norm_num_groups=8,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    )
    pladis_error(DDPMPipeline(unet=unet, scheduler=DDPMScheduler()), TypeError, "UNet2DModel")


def test_class_conditional_transformer_is_refused_by_class_name():
    transformer = DiTTransformer2DModel(
        sample_size=8,
        num_layers=1,
        patch_size=2,
        attention_head_dim=8,
        num_attention_heads=2,
        in_channels=4,
        out_channels=8,
    )
    pladis_error(types.SimpleNamespace(transformer=transformer), TypeError, "DiTTransformer2DModel")


@pytest.mark.parametrize(
    "model,processor,layer",
    [
        (
            lambda: HunyuanDiT2DModel(
                sample_size=16,
                num_layers=1,
                patch_size=2,
                attention_head_dim=8,
                num_attention_heads=3,
                in_channels=4,
                cross_attention_dim=32,
                cross_attention_dim_t5=32,
                pooled_projection_dim=16,
                hidden_size=24,
                activation_fn="gelu-approximate",
            ),
            "HunyuanAttnProcessor2_0",
            "blocks.0.attn2",
        ),
        (
            lambda: AuraFlowTransformer2DModel(
                sample_size=32,
                patch_size=2,
                in_channels=4,
                num_mmdit_layers=1,
                num_single_dit_layers=1,
                attention_head_dim=8,
                num_attention_heads=4,
                caption_projection_dim=32,
                joint_attention_dim=32,
                out_channels=4,
                pos_embed_max_size=256,
            ),
            "AuraFlowAttnProcessor2_0",
            "joint_transformer_blocks.0.attn",
        ),
    ],
)
def test_text_attention_with_an_unknown_processor_is_refused(model, processor, layer):
    transformer = model()
    before = processors_by_name(transformer)
    pladis_error(types.SimpleNamespace(transformer=transformer), ValueError, f"{processor} on {layer}")
    assert same_processor_objects(transformer, before)


@pytest.fixture
def sd15():
    return build("sd15")


def test_a_custom_processor_with_weights_is_refused_naming_what_works_and_the_pipeline_left_untouched(sd15):
    class MyIPAdapter(IPAdapterAttnProcessor2_0):
        """Derived from the IP-Adapter processor, with weights, but it may do anything: refuse, don't guess."""

    layer = sd15.unet.mid_block.attentions[0].transformer_blocks[0].attn2
    layer.set_processor(MyIPAdapter(hidden_size=32, cross_attention_dim=32))
    before = processors_by_name(sd15.unet)
    counter = CallCounter(sd15.unet)
    pladis_error(
        sd15,
        ValueError,
        r"MyIPAdapter on mid_block.attentions.0.transformer_blocks.0.attn2 \(what it does would be dropped\); "
        r"every cross-attention \(attn2\) of UNet2DConditionModel run PLADIS with the stock processors "
        r"AttnProcessor, AttnProcessor2_0, .*IPAdapterAttnProcessor2_0.* \(IP-Adapters from load_ip_adapter included\)",
    )
    counter.remove()
    assert counter.count == 0 and same_processor_objects(sd15.unet, before)


def test_custom_processor_on_cross_attention_is_refused(sd15):
    class MyProcessor(AttnProcessor2_0):
        """A user's own processor (even one derived from the stock one) may do anything: refuse, don't guess."""

    sd15.unet.up_blocks[1].attentions[0].transformer_blocks[0].attn2.set_processor(MyProcessor())
    pladis_error(sd15, ValueError, "MyProcessor on up_blocks.1.attentions.0.transformer_blocks.0.attn2")


def test_custom_processor_on_self_attention_is_kept(sd15):
    class MyProcessor(AttnProcessor2_0):
        pass

    custom = MyProcessor()
    sd15.unet.mid_block.attentions[0].transformer_blocks[0].attn1.set_processor(custom)
    with apply_pladis(sd15, 2.0):
        assert sd15.unet.mid_block.attentions[0].transformer_blocks[0].attn1.processor is custom
        run_family(sd15, "sd15", num_inference_steps=1)


def test_nonstandard_logit_scale_is_refused(sd15):
    layer = sd15.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2
    layer.scale_qk, layer.scale = False, 1.0
    pladis_error(sd15, ValueError, "scale_qk=False")


def test_compiled_denoiser_is_unwrapped_not_refused(sd15):
    sd15.unet = torch.compile(sd15.unet, backend="eager")  # an OptimizedModule around the UNet
    with apply_pladis(sd15, 2.0):
        assert type(sd15.unet._orig_mod.mid_block.attentions[0].transformer_blocks[0].attn2.processor).__name__ == (
            "PLADISAttnProcessor"
        )


def test_a_model_of_no_family_is_refused_by_class_name():
    from diffusers import Lumina2Transformer2DModel

    transformer = Lumina2Transformer2DModel(
        sample_size=16,
        patch_size=2,
        in_channels=4,
        hidden_size=24,
        num_layers=2,
        num_refiner_layers=1,
        num_attention_heads=3,
        num_kv_heads=1,
        multiple_of=16,
        axes_dim_rope=(4, 2, 2),
        axes_lens=(128, 128, 128),
        cap_feat_dim=8,
    )
    processors = [module.processor for module in transformer.modules() if hasattr(module, "processor")]
    pladis_error(transformer, TypeError, "Lumina2Transformer2DModel")
    assert processors == [module.processor for module in transformer.modules() if hasattr(module, "processor")]
