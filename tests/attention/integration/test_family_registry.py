"""The model-family registry is open and lazy: importing `attention` imports no diffusers transformer module, a
subclass of a registered denoiser gets its parent's record, and a family a user registers gets PLADIS."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from diffusers.models.transformers.transformer_flux import FluxAttention, FluxAttnProcessor

import attention
from attention import Family, TextAttention, apply_pladis, family_of, register_family
from attention.integration import diffusers_families
from attention.integration.text_layout import LEADING
from tests.tiny_denoisers import DENOISERS

PUBLIC_IMPORT = "from attention import " + ", ".join(
    name for name in attention.__all__ if name not in ("PLADISFluxAttnProcessor", "PLADISSanaAttnProcessor")
)


@pytest.fixture
def registry(monkeypatch):
    """The registry as it is, restored after the test (registrations are process-wide)."""
    monkeypatch.setattr(diffusers_families, "_FAMILIES", dict(diffusers_families._FAMILIES))
    monkeypatch.setattr(diffusers_families, "_DENOISERS", dict(diffusers_families._DENOISERS))


@pytest.mark.slow  # a fresh interpreter importing torch and diffusers: ~6 s
def test_importing_the_api_imports_no_diffusers_transformer_module():
    """Every public name but the two processor classes of transformer-module processors (made when asked for)."""
    code = f"import sys; {PUBLIC_IMPORT}; print(sorted(m for m in sys.modules if 'models.transformers' in m))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_a_subclass_of_a_registered_denoiser_gets_its_parents_record_and_pladis():
    tiny = DENOISERS["chroma"]
    parent, inputs = tiny.build(), tiny.inputs(0)
    child = tiny.build()
    child.__class__ = type("MyChroma", (type(parent),), {})  # a user's subclass, same weights
    assert family_of(child) is family_of(parent) and family_of(child).name == "Chroma"
    with torch.no_grad():
        stock = child(**inputs).sample
        with apply_pladis(parent, 2.0):
            expected = parent(**inputs).sample
        with apply_pladis(child, 2.0):
            ours = child(**inputs).sample
    assert torch.equal(ours, expected) and not torch.equal(ours, stock)


class JointDenoiser(torch.nn.Module):
    """A model PLADIS does not know: one FLUX-style joint attention over `[text ; image]`, no family record."""

    def __init__(self) -> None:
        super().__init__()
        self.block = FluxAttention(query_dim=32, heads=2, dim_head=16, added_kv_proj_dim=32, context_pre_only=False)

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        return self.block(hidden_states, encoder_hidden_states)[0]


def _joint_inputs() -> dict:
    generator = torch.Generator().manual_seed(0)
    return {
        "hidden_states": torch.randn(1, 24, 32, generator=generator),
        "encoder_hidden_states": torch.randn(1, 7, 32, generator=generator),
    }


def test_a_family_a_user_registers_gets_pladis(registry):
    model, inputs = JointDenoiser().eval(), _joint_inputs()
    with pytest.raises(TypeError, match="got JointDenoiser; it supports"):
        apply_pladis(model, 2.0).__enter__()
    blocks = TextAttention(
        "joint blocks",
        lambda name, module: isinstance(module, FluxAttention),
        LEADING,
        {FluxAttnProcessor: FluxAttnProcessor},
    )
    family = register_family(Family("My joint model", (JointDenoiser,), (blocks,)))
    assert family_of(model) is family and family in attention.FAMILIES
    assert "My joint model" in diffusers_families.supported_families()
    with torch.no_grad():
        stock = model(**inputs)
        with apply_pladis(model, 2.0):
            ours = model(**inputs)
        model.block.set_processor(attention.PLADISFluxAttnProcessor(2.0))  # the same processor set by hand
        expected = model(**inputs)
    assert torch.equal(ours, expected) and not torch.equal(ours, stock)


def test_register_family_replaces_by_name_and_refuses_what_it_cannot_take(registry):
    blocks = TextAttention("blocks", lambda name, module: False, LEADING, {FluxAttnProcessor: FluxAttnProcessor})
    first = register_family(Family("Mine", (JointDenoiser,), (blocks,)))
    second = register_family(Family("Mine", (f"{JointDenoiser.__module__}:JointDenoiser",), (blocks, blocks)))
    assert family_of(JointDenoiser()) is second is not first
    with pytest.raises(ValueError, match=r"FluxTransformer2DModel is already a denoiser of the family 'FLUX.1'"):
        register_family(Family("Other", ("diffusers.models.transformers.transformer_flux:FluxTransformer2DModel",), ()))
    with pytest.raises(ValueError, match="names no denoiser class"):
        register_family(Family("Nothing", (), (blocks,)))
    with pytest.raises(TypeError, match="register_family takes a Family record, got str"):
        register_family("FLUX.1")
