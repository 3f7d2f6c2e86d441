"""The model-family registry is open and lazy: importing `attention` imports no diffusers transformer module, a
subclass of a registered denoiser gets its parent's record, and a family a user registers gets PLADIS."""

from __future__ import annotations

import subprocess
import sys
from contextlib import contextmanager

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
    monkeypatch.setattr(diffusers_families, "_registry", diffusers_families._registry)


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


def _never(name: str, module: torch.nn.Module) -> bool:
    return False


_BLOCKS = TextAttention("blocks", _never, LEADING, {FluxAttnProcessor: FluxAttnProcessor})
_FLUX_PROCESSOR_DOTTED = "diffusers.models.transformers.transformer_flux.FluxAttnProcessor"  # "." where ":" belongs


def _kind(**fields) -> TextAttention:
    return TextAttention(**{"blocks": "blocks", "selects": _never, "text_keys": LEADING, "processors": {}, **fields})


def _family(**fields) -> Family:
    return Family(**{"name": "T", "denoisers": (JointDenoiser,), "text_attention": (_BLOCKS,), **fields})


# (the field the message names, the given value it shows, the error, the record); "seen" rows are reported mistakes
BAD_RECORDS = {
    "name empty": ("Family.name", "''", ValueError, lambda: _family(name="")),
    "name not a str": ("Family.name", "None", TypeError, lambda: _family(name=None)),
    "seen: denoisers a str": ("Family.denoisers", "'mymod:M'", TypeError, lambda: _family(denoisers="mymod:M")),
    "seen: denoiser dotted": (
        "Family.denoisers[0]",
        "'pkg.mod.Cls'",
        ValueError,
        lambda: _family(denoisers=("pkg.mod.Cls",)),
    ),
    "denoiser no module": ("Family.denoisers[0]", "':Cls'", ValueError, lambda: _family(denoisers=(":Cls",))),
    "denoiser no class": ("Family.denoisers[0]", "'pkg.mod:'", ValueError, lambda: _family(denoisers=("pkg.mod:",))),
    "denoiser two colons": (
        "Family.denoisers[1]",
        "'a:b:C'",
        ValueError,
        lambda: _family(denoisers=(JointDenoiser, "a:b:C")),
    ),
    "denoiser an instance": ("Family.denoisers[0]", "int: 3", TypeError, lambda: _family(denoisers=(3,))),
    "seen: text_attention one record": (
        "Family.text_attention",
        "TextAttention(blocks='blocks'",
        TypeError,
        lambda: _family(text_attention=_BLOCKS),
    ),
    "text_attention item": ("Family.text_attention", "'joint'", TypeError, lambda: _family(text_attention=("joint",))),
    "record not callable": ("Family.record", "'tokens'", TypeError, lambda: _family(record="tokens")),
    "blocks empty": ("TextAttention.blocks", "' '", ValueError, lambda: _kind(blocks=" ")),
    "selects not callable": ("TextAttention.selects", "'attn2'", TypeError, lambda: _kind(selects="attn2")),
    "seen: text_keys unknown": ("TextAttention.text_keys", "'first'", ValueError, lambda: _kind(text_keys="first")),
    "text_keys not a str": ("TextAttention.text_keys", "None", TypeError, lambda: _kind(text_keys=None)),
    "seen: processors a list": (
        "TextAttention.processors",
        "list: [<class",
        TypeError,
        lambda: _kind(processors=[FluxAttnProcessor]),
    ),
    "seen: processor dotted": (
        "TextAttention.processors key",
        repr(_FLUX_PROCESSOR_DOTTED),
        ValueError,
        lambda: _kind(processors={_FLUX_PROCESSOR_DOTTED: _FLUX_PROCESSOR_DOTTED}),
    ),
    "processor runs as a bare name": (
        "TextAttention.processors value",
        "'FluxAttnProcessor'",
        ValueError,
        lambda: _kind(processors={FluxAttnProcessor: "FluxAttnProcessor"}),
    ),
    "processor an instance": (
        "TextAttention.processors value",
        "FluxAttnProcessor: <",
        TypeError,
        lambda: _kind(processors={FluxAttnProcessor: FluxAttnProcessor()}),
    ),
    "optional not a bool": ("TextAttention.optional", "'yes'", TypeError, lambda: _kind(optional="yes")),
    "image_context_calls not callable": (
        "TextAttention.image_context_calls",
        "1",
        TypeError,
        lambda: _kind(image_context_calls=1),
    ),
}


@pytest.mark.parametrize(("field", "given", "error", "make"), BAD_RECORDS.values(), ids=BAD_RECORDS.keys())
def test_a_bad_record_is_refused_when_made_naming_the_field_the_value_and_what_is_accepted(field, given, error, make):
    with pytest.raises(error) as refused:
        make()
    message = str(refused.value)
    assert message.startswith(f"{field} must be ") and given in message, message


def test_a_record_takes_lists_and_keeps_paths_unimported():
    """Paths are checked for their form only: a module that does not exist yet is not imported when the record is
    made (a family registered ahead of its release), and lists are kept as tuples."""
    kind = _kind(processors={"no_such.module:Processor": "no_such.module:Processor"})
    family = _family(denoisers=["no_such.module:Model", JointDenoiser], text_attention=[kind])
    assert family.denoisers == ("no_such.module:Model", f"{JointDenoiser.__module__}:JointDenoiser")
    assert family.text_attention == (kind,) and "no_such" not in sys.modules


@contextmanager
def _observed_at_every_line_of(function, observe):
    """Run `observe()` before each line `function` executes in this thread (a reader interleaved at every step of a
    writer, deterministically), collecting what it returns or raises in the list yielded."""
    seen, previous = [], sys.gettrace()

    def step(frame, event, arg):
        if event == "line":
            try:
                seen.append(observe())
            except Exception as error:  # what a concurrent reader would hit
                seen.append(error)
        return step

    sys.settrace(lambda frame, event, arg: step if frame.f_code is function.__code__ else None)
    try:
        yield seen
    finally:
        sys.settrace(previous)


def test_a_reader_between_any_two_steps_of_a_re_registration_sees_the_old_or_the_new_record(registry):
    """`family_of` takes no lock: a server thread resolving a model while another re-registers its family gets one
    consistent record, never a KeyError, and the registered families name the family exactly once."""
    model = JointDenoiser()
    first = register_family(Family("Mine", (JointDenoiser,), (_BLOCKS,)))
    second = Family("Mine", (f"{JointDenoiser.__module__}:JointDenoiser", "my.models:Other"), (_BLOCKS,))

    def observe():
        names = [family.name for family in diffusers_families.registered_families()]
        return family_of(model), names.count("Mine")

    with _observed_at_every_line_of(register_family, observe) as seen:
        register_family(second)
    inconsistent = [result for result in seen if result != (first, 1) and result != (second, 1)]
    assert len(seen) > 3 and not inconsistent, inconsistent
    assert family_of(model) is second
