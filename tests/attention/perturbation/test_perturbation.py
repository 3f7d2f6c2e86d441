"""Per-call perturbed self-attention (`attention.perturbation.perturbed_calls`) on a shared U-Net, below the
pipelines: each call's perturbation and recorded latent size are its own, other contexts run the original
processors, and the last call to leave puts the original processor objects and hooks back."""

from __future__ import annotations

import contextvars

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0, PAGIdentitySelfAttnProcessor2_0

from attention.perturbation.perturbed_calls import PerturbableProcessor, perturbed_call, perturbed_layer_names
from tests.family_runs import build
from tests.tiny import processors_by_name, processors_in_effect, same_processor_objects


@pytest.fixture(scope="module")
def unet():
    return build("sd15").unet


def unet_inputs(unet, height: int, width: int) -> dict:
    generator = torch.Generator().manual_seed(0)
    return {
        "sample": torch.randn(2, unet.config.in_channels, height, width, generator=generator),
        "timestep": 10,
        "encoder_hidden_states": torch.randn(2, 4, unet.config.cross_attention_dim, generator=generator),
    }


def test_a_call_perturbs_its_layers_in_its_own_context_only(unet):
    before, hooks = processors_by_name(unet), dict(unet._forward_pre_hooks)
    identity = PAGIdentitySelfAttnProcessor2_0()
    layers = perturbed_layer_names(unet, ["mid"])
    with perturbed_call(unet) as call:
        assert all(isinstance(p, PerturbableProcessor) for n, p in unet.attn_processors.items() if ".attn1." in n)
        call.perturb(layers, identity)
        seen_here = processors_in_effect(unet)
        seen_elsewhere = contextvars.Context().run(processors_in_effect, unet)  # another thread's view
    assert {name for name, p in seen_here.items() if p is identity} == {f"{name}.processor" for name in layers}
    assert all(seen_elsewhere[name] is before[name] for name in before)
    assert same_processor_objects(unet, before) and dict(unet._forward_pre_hooks) == hooks


def test_each_call_records_the_latent_size_of_its_own_unet_calls(unet):
    with perturbed_call(unet) as call, torch.no_grad():
        unet(**unet_inputs(unet, 8, 8))

        def other_call():
            with perturbed_call(unet) as other:
                unet(**unet_inputs(unet, 8, 16))
                return other.latent_size.height, other.latent_size.width

        assert contextvars.Context().run(other_call) == (8, 16)
        assert (call.latent_size.height, call.latent_size.width) == (8, 8)


def test_unknown_layers_are_refused(unet):
    with perturbed_call(unet) as call, pytest.raises(ValueError, match="not self-attention layers"):
        call.perturb(frozenset({"mid_block.attentions.0.transformer_blocks.0.attn2"}), AttnProcessor2_0())
