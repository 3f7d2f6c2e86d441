"""PLADIS with IP-Adapter: in each adapter layer the attention on the text gets the PLADIS rule and the attention
on the image prompt stays dense. Tiny adapters are built offline (`tests/tiny_ip_adapter.py`) and loaded with
diffusers' own `load_ip_adapter`; the SDXL and FLUX pipelines run with `ip_adapter_image` against the float64
materialised reference, bit-identical to the stock pipeline at λ = 0, with every processor back after the call and
the adapter's weights in the model during it. SD3.5's and Chroma's adapter processors are checked on their
denoisers, and the U-Net's classic and xformers adapter processors run as the SDPA one on their own weights."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from diffusers import FluxPipeline, StableDiffusionXLPipeline
from diffusers.models.attention_processor import (
    IPAdapterAttnProcessor,
    IPAdapterAttnProcessor2_0,
    IPAdapterXFormersAttnProcessor,
    SD3IPAdapterJointAttnProcessor2_0,
)
from diffusers.models.transformers import transformer_flux
from diffusers.models.transformers.transformer_flux import FluxIPAdapterAttnProcessor
from PIL import Image

from attention import PLADISProcessor, apply_pladis, pladis_processors, swapped_attn_processors
from pipeline.pipeline_flux_pladis import PLADISFluxPipeline
from pipeline.pipeline_sdxl import PLADISStableDiffusionXLPipeline
from scripts.cli.assets import TINY_CONTROL_IMAGE, TINY_FLUX_SCHNELL, TINY_SDXL
from scripts.dev.build_tiny_assets import build_tiny_sd3
from tests.family_runs import one_thread  # noqa: F401
from tests.materialised_reference import as_double, materialised_pladis, relative_error
from tests.tiny import processors_by_name, run_pipe, same_processor_objects
from tests.tiny_denoisers import DENOISERS, TEXT
from tests.tiny_ip_adapter import IMAGE_EMBED_DIM, IMAGE_TOKENS, ip_adapter_state_dict, load_tiny_ip_adapter

IMAGE = Image.open(TINY_CONTROL_IMAGE).convert("RGB")
# family → (PLADIS pipeline, stock parent, tiny model, call options, adapter processor, text tokens)
PIPELINES = {
    "sdxl": (PLADISStableDiffusionXLPipeline, StableDiffusionXLPipeline, TINY_SDXL, {}, IPAdapterAttnProcessor2_0, 77),
    "flux": (
        PLADISFluxPipeline,
        FluxPipeline,
        TINY_FLUX_SCHNELL,
        {"max_sequence_length": 32},
        FluxIPAdapterAttnProcessor,
        32,
    ),
}


@pytest.fixture(scope="module", params=sorted(PIPELINES))
def family(request):
    return request.param


@pytest.fixture(scope="module")
def pipes(family, tmp_path_factory):
    cls, parent, path, *_ = PIPELINES[family]
    pipe = cls.from_pretrained(path, local_files_only=True)
    load_tiny_ip_adapter(pipe, tmp_path_factory.mktemp(f"{family}-ip-adapter"))
    return pipe, parent.from_pipe(pipe)


def denoiser(pipe) -> torch.nn.Module:
    return pipe.unet if getattr(pipe, "unet", None) is not None else pipe.transformer


def run(pipe, family: str, image=IMAGE, **kwargs) -> torch.Tensor:
    """Latents of a 2-step tiny run with `image` as the image prompt."""
    return run_pipe(pipe, ip_adapter_image=image, output_type="latent", **PIPELINES[family][3], **kwargs)


def adapter_layers(model: torch.nn.Module, family: str) -> list[str]:
    """The attention layers of `model` holding the family's IP-Adapter processor."""
    return [
        name.removesuffix(".processor")
        for name, module in model.named_modules()
        if type(module) is PIPELINES[family][4]
    ]


def reference(stock, family: str, scale: float, alpha: float, text_tokens: int | None = None) -> torch.Tensor:
    """The stock pipeline with the float64 reference in its attention calls: the PLADIS rule on the text of each
    adapter layer (cross-attention: on keys that are the text; `text_tokens=None`: on every call, the image
    prompt's too), dense attention everywhere else."""
    model, tokens = denoiser(stock), PIPELINES[family][5]
    layers = adapter_layers(model, family)
    if family == "sdxl":
        layouts, module = {name: ("cross", text_tokens or None) for name in layers}, torch.nn.functional
    else:
        layouts, module = {name: ("leading", tokens) for name in layers}, transformer_flux
    with materialised_pladis(model, module, layouts, scale, alpha):
        return run(stock, family)


@pytest.mark.slow  # per family and scale
@pytest.mark.parametrize("scale,alpha", [(2.0, 1.5), (1.5, 2.0)])
def test_text_gets_the_rule_and_the_image_prompt_stays_dense(pipes, family, scale, alpha):
    pipe, stock = pipes
    ours = run(pipe, family, pladis_scale=scale, pladis_alpha=alpha)
    assert relative_error(ours, reference(stock, family, scale, alpha, PIPELINES[family][5])) <= 1e-4
    assert relative_error(ours, run(stock, family)) > 1e-3  # the rule really acted
    if family == "sdxl":  # the tolerance tells apart the variant with the rule on the image prompt too
        assert relative_error(ours, reference(stock, family, scale, alpha, None)) > 1e-3


def test_zero_scale_is_bit_identical_to_the_stock_pipeline_and_the_adapter_acts(pipes, family):
    pipe, stock = pipes
    stock_latents = run(stock, family)
    torch.testing.assert_close(run(pipe, family, pladis_scale=0.0), stock_latents, rtol=0, atol=0)
    assert relative_error(run(stock, family, image=IMAGE.transpose(Image.FLIP_LEFT_RIGHT)), stock_latents) > 1e-3


def test_adapter_weights_stay_in_the_model_during_the_call_and_processors_come_back(pipes, family):
    pipe, _ = pipes
    model = denoiser(pipe)
    before, keys = processors_by_name(model), set(model.state_dict())
    adapters = {name: processor for name, processor in before.items() if type(processor) is PIPELINES[family][4]}
    adapter_weights = {id(weight) for processor in adapters.values() for weight in processor.parameters()}
    assert adapters and adapter_weights
    seen = {}

    def check(pipeline, step, timestep, callback_kwargs):
        installed = denoiser(pipeline).attn_processors
        seen["pladis"] = all(
            isinstance(installed[name], PLADISProcessor) and installed[name].original is adapters[name]
            for name in adapters
        )
        # In the module tree (moved by `.to()` and by offloading hooks), as without PLADIS.
        seen["weights"] = adapter_weights <= {id(weight) for weight in denoiser(pipeline).parameters()}
        if step == 1:
            raise RuntimeError("boom in the denoising loop")
        return callback_kwargs

    with pytest.raises(RuntimeError, match="boom"):
        run(pipe, family, pladis_scale=2.0, callback_on_step_end=check)
    assert seen == {"pladis": True, "weights": True}
    assert same_processor_objects(model, before) and set(model.state_dict()) == keys


def test_moving_the_model_while_pladis_is_installed_moves_the_adapter_weights(pipes, family):
    pipe, _ = pipes
    model, before = denoiser(pipe), processors_by_name(denoiser(pipe))
    weights = [w for p in before.values() if type(p) is PIPELINES[family][4] for w in p.parameters()]
    with apply_pladis(pipe, 2.0):
        model.to(torch.float64)
        moved = {weight.dtype for weight in weights}
        model.to(torch.float32)
    assert moved == {torch.float64} and {weight.dtype for weight in weights} == {torch.float32}
    assert same_processor_objects(model, before)


@pytest.mark.slow
def test_fixed_setting_processors_for_adapter_layers_give_the_pipelines_image(pipes, family):
    pipe, stock = pipes
    model, before = denoiser(stock), processors_by_name(denoiser(stock))
    with swapped_attn_processors(model, pladis_processors(model, 2.0, 1.5)):
        fixed = run(stock, family)
    torch.testing.assert_close(fixed, run(pipe, family, pladis_scale=2.0), rtol=0, atol=0)
    assert same_processor_objects(model, before)


@pytest.mark.slow
@pytest.mark.parametrize("processor_type", [IPAdapterAttnProcessor, IPAdapterXFormersAttnProcessor])
def test_classic_and_xformers_unet_adapters_run_as_the_sdpa_one_on_their_own_weights(processor_type, tmp_path):
    pipe = PLADISStableDiffusionXLPipeline.from_pretrained(TINY_SDXL, local_files_only=True)
    load_tiny_ip_adapter(pipe, tmp_path)
    sdpa = run(pipe, "sdxl", pladis_scale=2.0)
    replaced = {}
    for name, processor in pipe.unet.attn_processors.items():
        if isinstance(processor, IPAdapterAttnProcessor2_0):
            other = processor_type(processor.hidden_size, processor.cross_attention_dim, processor.num_tokens)
            other.load_state_dict(processor.state_dict())
            processor = other
        replaced[name] = processor
    pipe.unet.set_attn_processor(replaced)
    before = processors_by_name(pipe.unet)
    torch.testing.assert_close(run(pipe, "sdxl", pladis_scale=2.0), sdpa, rtol=0, atol=0)
    assert same_processor_objects(pipe.unet, before)


def _nested(weights: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """The flat adapter file as `_load_ip_adapter_weights` takes it: {"image_proj": …, "ip_adapter": …}."""
    return {
        part: {k.removeprefix(f"{part}."): v for k, v in weights.items() if k.startswith(part)}
        for part in ("image_proj", "ip_adapter")
    }


def _chroma_with_adapter():
    model = DENOISERS["chroma"].build()
    model._load_ip_adapter_weights([_nested(ip_adapter_state_dict(model))])
    inputs = DENOISERS["chroma"].inputs(0)
    embeds = torch.randn(2, 1, IMAGE_EMBED_DIM, generator=torch.Generator().manual_seed(5))
    inputs["joint_attention_kwargs"] = {"ip_adapter_image_embeds": [embeds]}
    layouts = {name: ("leading", TEXT) for name in adapter_layers(model, "flux")}
    return model, inputs, transformer_flux, layouts, lambda output: output.sample


def _sd35_with_adapter():
    model = build_tiny_sd3(dual_attention=True).transformer
    generator = torch.Generator().manual_seed(6)
    heads, head_dim = model.config.num_attention_heads, model.config.attention_head_dim
    processors = dict(model.attn_processors)
    torch.manual_seed(6)
    for name in processors:
        if name.startswith("transformer_blocks.") and name.endswith(".attn.processor"):
            processors[name] = SD3IPAdapterJointAttnProcessor2_0(heads * head_dim, 16, head_dim, timesteps_emb_dim=32)
    model.set_attn_processor(processors)
    inputs = {
        "hidden_states": torch.randn(2, 16, 8, 8, generator=generator),
        "encoder_hidden_states": torch.randn(2, TEXT, 32, generator=generator),
        "pooled_projections": torch.randn(2, 64, generator=generator),
        "timestep": torch.tensor([500, 500]),
        "joint_attention_kwargs": {
            "ip_hidden_states": torch.randn(2, IMAGE_TOKENS, 16, generator=generator),
            "temb": torch.randn(2, 32, generator=generator),
        },
    }
    layouts = {
        name: ("trailing", TEXT)
        for name, module in model.named_modules()
        if type(getattr(module, "processor", None)) is SD3IPAdapterJointAttnProcessor2_0
    }
    return model, inputs, torch.nn.functional, layouts, lambda output: output.sample


DENOISER_ADAPTERS = {"chroma": _chroma_with_adapter, "sd3.5": _sd35_with_adapter}


@pytest.mark.parametrize("name", sorted(DENOISER_ADAPTERS))
def test_chroma_and_sd35_adapter_layers_match_the_reference(name):
    model, inputs, module, layouts, output = DENOISER_ADAPTERS[name]()
    assert layouts
    before = processors_by_name(model)
    with torch.no_grad():
        stock = output(model(**copy.deepcopy(inputs)))
        with apply_pladis(model, 0.0):
            torch.testing.assert_close(output(model(**copy.deepcopy(inputs))), stock, rtol=0, atol=0)
        with apply_pladis(model, 2.0):
            ours = output(model(**copy.deepcopy(inputs)))
        double = copy.deepcopy(model).double()
        with materialised_pladis(double, module, layouts, 2.0, 1.5):
            want = output(double(**as_double(copy.deepcopy(inputs))))
    assert relative_error(ours, want) <= 1e-4
    assert relative_error(ours, stock) > 1e-3
    assert same_processor_objects(model, before)
    assert np.isfinite(ours.numpy()).all()
