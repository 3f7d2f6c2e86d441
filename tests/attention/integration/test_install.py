"""`apply_pladis` on bare denoisers (modular pipelines, hand-written loops): the same PLADIS as through the
pipeline, and the denoiser ends as it started (processor objects, hooks), after a normal exit and after an
exception, which propagates."""

from __future__ import annotations

import pytest
import torch

from attention import PLADISAttnProcessor, apply_pladis, family_of
from scripts.dev.build_tiny_assets import tiny_flux_transformer
from tests.family_runs import build, one_thread  # noqa: F401
from tests.tiny import processors_by_name, same_processor_objects


def unet_inputs(unet, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {
        "sample": torch.randn(2, unet.config.in_channels, 8, 8, generator=generator),
        "timestep": torch.tensor(500),
        "encoder_hidden_states": torch.randn(2, 7, unet.config.cross_attention_dim, generator=generator),
    }


def flux_inputs(transformer, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    config = transformer.config
    side, text = 4, 6
    axis = torch.arange(side, dtype=torch.float32)
    ids = torch.stack(torch.meshgrid(torch.zeros(1), axis, axis, indexing="ij"), -1).reshape(-1, 3)
    return {
        "hidden_states": torch.randn(1, side * side, config.in_channels, generator=generator),
        "encoder_hidden_states": torch.randn(1, text, config.joint_attention_dim, generator=generator),
        "pooled_projections": torch.randn(1, config.pooled_projection_dim, generator=generator),
        "timestep": torch.tensor([0.5]),
        "img_ids": ids,
        "txt_ids": torch.zeros(text, 3),
        **({"guidance": torch.tensor([3.5])} if config.guidance_embeds else {}),
    }


def test_bare_unet_gets_the_pipelines_pladis():
    pipe = build("sd15")
    inputs = unet_inputs(pipe.unet)
    with torch.no_grad():
        stock = pipe.unet(**inputs).sample
        with apply_pladis(pipe, 2.0):
            via_pipeline = pipe.unet(**inputs).sample
        with apply_pladis(pipe.unet, 2.0):
            bare = pipe.unet(**inputs).sample
            assert isinstance(
                pipe.unet.mid_block.attentions[0].transformer_blocks[0].attn2.processor, PLADISAttnProcessor
            )
    torch.testing.assert_close(bare, via_pipeline, rtol=0, atol=0)
    assert (bare - stock).abs().max() > 1e-4


def test_bare_transformer_of_a_joint_family_gets_pladis():
    transformer = build("sd3").transformer
    generator = torch.Generator().manual_seed(1)
    inputs = {
        "hidden_states": torch.randn(1, transformer.config.in_channels, 8, 8, generator=generator),
        "encoder_hidden_states": torch.randn(1, 5, transformer.config.joint_attention_dim, generator=generator),
        "pooled_projections": torch.randn(1, transformer.config.pooled_projection_dim, generator=generator),
        "timestep": torch.tensor([500]),
    }
    with torch.no_grad():
        stock = transformer(**inputs).sample
        with apply_pladis(transformer, 0.0):
            assert torch.equal(transformer(**inputs).sample, stock)
        with apply_pladis(transformer, 2.0):
            changed = transformer(**inputs).sample
    assert (changed - stock).abs().max() > 1e-4


@pytest.mark.parametrize("raise_inside", [False, True])
def test_bare_denoiser_ends_as_it_started(raise_inside):
    transformer = tiny_flux_transformer(guidance_embeds=False).eval()
    before, hooks = processors_by_name(transformer), dict(transformer._forward_pre_hooks)
    inputs = flux_inputs(transformer)
    with torch.no_grad():
        stock = transformer(**inputs).sample
        try:
            with apply_pladis(transformer, 2.0, pladis_single_blocks=True):
                assert not same_processor_objects(transformer, before)
                assert len(transformer._forward_pre_hooks) == len(hooks) + 1  # the text-length recorder
                transformer(**inputs)
                if raise_inside:
                    raise KeyError("inside the body")
        except KeyError as error:
            assert raise_inside and error.args == ("inside the body",)
        assert same_processor_objects(transformer, before)
        assert dict(transformer._forward_pre_hooks) == hooks
        assert torch.equal(transformer(**inputs).sample, stock)


def test_objects_that_are_no_denoiser_are_refused_by_class_name():
    with pytest.raises(TypeError, match="got Linear"):
        with apply_pladis(torch.nn.Linear(2, 2), 2.0):
            pytest.fail("the body must not run")
    unet = build("sd15").unet
    with pytest.raises(ValueError, match="pladis_controlnet=True needs a pipeline"):
        with apply_pladis(unet, 2.0, pladis_controlnet=True):
            pytest.fail("the body must not run")


def test_unregistered_models_use_the_attention_module_record():
    unet = build("sd15").unet
    assert family_of(unet).denoisers == ()
    assert family_of(tiny_flux_transformer(guidance_embeds=True)).name == "FLUX.1"


def test_an_object_shared_on_a_model_lives_while_a_call_uses_it_and_a_failed_entry_leaves_it_as_it_was():
    """`shared_on_model`, the life cycle of PLADIS installations and of SEG/PAG's perturbable layers: one object per
    model for all the calls inside, removed when the last leaves; an entry whose `join` raises removes an object no
    call uses, and leaves one other calls use untouched."""
    from attention.integration.install import shared_on_model

    class Shared:
        def __init__(self, model):
            self.model, self.users, self.removed = model, 0, 0

        def remove(self):
            self.removed += 1

    def refuse(shared):
        raise RuntimeError("join refused")

    model, table, made = torch.nn.Linear(1, 1), {}, []

    def make():
        made.append(Shared(model))
        return made[-1]

    with shared_on_model(table, model, make) as first:
        with shared_on_model(table, model, make) as second:
            assert second is first and first.users == 2 and table == {id(model): first}
        with pytest.raises(RuntimeError, match="join refused"):
            with shared_on_model(table, model, make, refuse):
                pass
        assert (first.users, first.removed, table) == (1, 0, {id(model): first})
    assert (first.users, first.removed, table, len(made)) == (0, 1, {}, 1)
    with pytest.raises(RuntimeError, match="join refused"):
        with shared_on_model(table, model, make, refuse):
            pass
    assert len(made) == 2 and made[1].removed == 1 and table == {}
