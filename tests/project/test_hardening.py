"""Hardening: bad models and tables are refused (every entry's bad values: tests/project/test_bad_values.py), a failed
call leaves the pipeline as it was, every processor kind stays finite in fp16/bf16 with extreme logits and fully
masked rows, and no project source enables remote code or loads pickles."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from diffusers.models.attention_processor import Attention, JointAttnProcessor2_0
from diffusers.models.transformers.transformer_flux import FluxAttention

from attention import (
    PLADISAttnProcessor,
    PLADISFluxAttnProcessor,
    PLADISJointAttnProcessor,
    PLADISSanaAttnProcessor,
    apply_pladis,
    pladis_processors,
    swapped_attn_processors,
)
from attention.validation import MAX_PLADIS_SCALE
from pipeline.pipeline_sdxl import PLADISStableDiffusionXLPipeline
from tests.family_runs import build, one_thread, run_family  # noqa: F401
from tests.tiny import CallCounter, processors_by_name, run_pipe, same_processor_objects

PROJECT = Path(__file__).resolve().parents[2]


@pytest.fixture
def sd15():
    return build("sd15")


def test_install_entries_reject_bad_models_and_tables(sd15):
    with pytest.raises(TypeError, match="got Linear"):
        pladis_processors(torch.nn.Linear(2, 2), 2.0, 1.5)
    with pytest.raises(ValueError, match="pladis_scale"):
        pladis_processors(sd15.unet, -2.0, 1.5)
    with pytest.raises(ValueError, match=r"unknown attention layer names for UNet2DConditionModel: \['mid_block.x'\]"):
        with swapped_attn_processors(sd15.unet, {"mid_block.x": PLADISAttnProcessor(2.0)}):
            pass
    with pytest.raises(TypeError, match="replacements must be a dict"):
        with swapped_attn_processors(sd15.unet, [PLADISAttnProcessor(2.0)]):
            pass


def test_a_failure_while_installing_on_the_second_model_restores_the_first(sd15, monkeypatch):
    """With several models (U-Net + ControlNet), a failure at the second install puts the first back."""
    controlnet = build("sd15").unet  # any model with cross-attention stands in for the ControlNet
    sd15.controlnet = controlnet
    unet_before, controlnet_before = processors_by_name(sd15.unet), processors_by_name(controlnet)

    def refuse(processors):
        raise RuntimeError("device lost while setting processors")

    monkeypatch.setattr(controlnet, "set_attn_processor", refuse)
    with pytest.raises(RuntimeError, match="device lost"):
        with apply_pladis(sd15, 2.0, pladis_controlnet=True):
            pytest.fail("the body must not run")
    assert same_processor_objects(sd15.unet, unet_before) and same_processor_objects(controlnet, controlnet_before)


def test_failed_calls_leave_no_hooks_and_no_processors_behind():
    pipe = build("sd3")
    before, hooks = processors_by_name(pipe.transformer), dict(pipe.transformer._forward_pre_hooks)
    counter = CallCounter(pipe.transformer)
    for options in ({"pladis_scale": math.nan}, {"pladis_scale": 2.0, "pladis_alpha": 3.0}):
        with pytest.raises(ValueError):
            with apply_pladis(pipe, **options):
                pass
    with pytest.raises(RuntimeError, match="boom"):
        with apply_pladis(pipe, 2.0):
            raise RuntimeError("boom")
    counter.remove()
    assert counter.count == 0
    assert same_processor_objects(pipe.transformer, before) and dict(pipe.transformer._forward_pre_hooks) == hooks


def extreme_cases(dtype: torch.dtype):
    """A layer of each kind with q/k projections scaled ×300 (logits ~1e4), inputs, and a mask whose second
    batch row masks every key (bool False or additive −inf)."""
    torch.manual_seed(0)
    cross = Attention(32, cross_attention_dim=24, heads=4, dim_head=8).eval()
    sana = Attention(
        32, cross_attention_dim=24, heads=4, dim_head=8, qk_norm="rms_norm_across_heads", kv_heads=4
    ).eval()
    joint = Attention(
        32,
        added_kv_proj_dim=32,
        heads=4,
        dim_head=8,
        out_dim=32,
        context_pre_only=False,
        processor=JointAttnProcessor2_0(),
    ).eval()
    flux = FluxAttention(32, heads=4, dim_head=8, added_kv_proj_dim=32).eval()
    for module in (cross, sana, joint, flux):
        module.to(dtype)
        with torch.no_grad():
            for projection in ("to_q", "to_k", "add_q_proj", "add_k_proj"):
                if getattr(module, projection, None) is not None:
                    getattr(module, projection).weight.mul_(300)
    hidden, text = torch.randn(2, 16, 32, dtype=dtype), torch.randn(2, 7, 24, dtype=dtype)
    joint_text = torch.randn(2, 7, 32, dtype=dtype)
    boolean = torch.ones(2, 1, 7, dtype=torch.bool)
    boolean[1] = False
    additive = torch.zeros(2, 1, 7, dtype=dtype).masked_fill_(~boolean, float("-inf"))
    joint_mask = torch.ones(2, 7 + 16, dtype=torch.bool)  # FLUX: (batch, keys) over [txt ; img]
    joint_mask[1] = False
    return [
        ("cross, bool mask", PLADISAttnProcessor, cross, (hidden, text), {"attention_mask": boolean}),
        ("cross, -inf mask", PLADISAttnProcessor, cross, (hidden, text), {"attention_mask": additive}),
        ("sana, -inf mask", PLADISSanaAttnProcessor, sana, (hidden, text), {"attention_mask": additive}),
        ("sd3 joint", PLADISJointAttnProcessor, joint, (hidden, joint_text), {}),
        ("flux joint, bool mask", PLADISFluxAttnProcessor, flux, (hidden, joint_text), {"attention_mask": joint_mask}),
    ]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("alpha,pladis_scale", [(1.5, 2.0), (2.0, 2.0), (1.3, 2.0), (1.5, MAX_PLADIS_SCALE)])
def test_every_processor_kind_is_finite_in_half_precision(dtype, alpha, pladis_scale):
    for label, processor, module, inputs, options in extreme_cases(dtype):
        with torch.no_grad():
            output = processor(pladis_scale, alpha)(module, *inputs, **options)
        for tensor in output if isinstance(output, tuple) else (output,):
            assert tensor.dtype == dtype and torch.isfinite(tensor).all(), label


def test_the_largest_accepted_scale_keeps_a_float16_sdxl_finite(tiny_sdxl_path):
    """λ = MAX_PLADIS_SCALE in fp16 (larger λ are refused: at 1e5–1e6 these latents turned to NaN)."""
    pipe = PLADISStableDiffusionXLPipeline.from_pretrained(
        tiny_sdxl_path, torch_dtype=torch.float16, local_files_only=True
    )
    latents = run_pipe(pipe, pladis_scale=MAX_PLADIS_SCALE, output_type="latent")
    assert latents.dtype == torch.float16 and torch.isfinite(latents).all()


@pytest.mark.parametrize("family", ["sd3", "pixart", "sana"])
def test_bfloat16_pipelines_are_finite(family):
    """In bf16 on the CPU (latents: the tiny VAEs are slow in bf16); SANA's empty negative prompt tokenizes to
    nothing, so its unconditional rows attend to a fully masked text."""
    pipe = build(family).to(torch.bfloat16)
    stock = run_family(pipe, family, output_type="latent")
    with apply_pladis(pipe, 2.0):
        boosted = run_family(pipe, family, output_type="latent")
    assert pipe.transformer.dtype == torch.bfloat16 and torch.isfinite(boosted).all()
    assert (boosted.float() - stock.float()).abs().max() > 1e-2


FORBIDDEN = {
    "remote code": re.compile(r"trust_remote_code\s*=\s*True"),
    "pickle fallback": re.compile(r"use_safetensors\s*=\s*False|safe_serialization\s*=\s*False"),
    "pickle module": re.compile(r"^\s*(import|from)\s+(pickle|dill|cloudpickle)\b", re.MULTILINE),
    "unrestricted torch.load": re.compile(r"torch\.load\((?![^)]*weights_only\s*=\s*True)[^)]*\)"),
    "custom pipeline code": re.compile(r"custom_pipeline\s*="),
}


def test_no_source_enables_remote_code_or_loads_pickles():
    sources = [path for folder in ("attention", "pipeline", "scripts") for path in (PROJECT / folder).rglob("*.py")]
    assert len(sources) > 10
    found = [
        f"{path.relative_to(PROJECT)}: {kind}"
        for path in sources
        for kind, pattern in FORBIDDEN.items()
        if pattern.search(path.read_text())
    ]
    assert found == []


WEIGHT_LOADER = re.compile(r"(\w+)\.from_pretrained\(")
NO_WEIGHTS = ("Processor", "Tokenizer", "Scheduler", "ImageProcessor")


def _call_text(source: str, open_paren: int) -> str:
    """The text of a call from its opening parenthesis to the matching closing one."""
    depth = 0
    for index in range(open_paren, len(source)):
        depth += {"(": 1, ")": -1}.get(source[index], 0)
        if depth == 0:
            return source[open_paren : index + 1]
    return source[open_paren:]


def test_every_weight_load_in_scripts_requires_safetensors():
    unsafe = []
    for path in (PROJECT / "scripts").rglob("*.py"):
        if path.name == "build_tiny_assets.py":  # builds from configs, loads nothing
            continue
        source = path.read_text()
        for match in WEIGHT_LOADER.finditer(source):
            call = _call_text(source, match.end() - 1)
            if not match.group(1).endswith(NO_WEIGHTS) and "use_safetensors=True" not in call:
                unsafe.append(f"{path.relative_to(PROJECT)}: {match.group(1)}.from_pretrained")
    assert unsafe == []
