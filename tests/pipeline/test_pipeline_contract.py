"""The PLADIS pipelines keep diffusers' pipeline contract: each `__call__` has its parent's exact parameters plus
the keywords the table (`pipeline/guidance.py`) gives it, and the parent's docstring plus theirs; a call binds
positionally and by keyword exactly as the parent's; a mistyped `pladis_*` keyword raises, naming it; and
diffusers' signature-based machinery (LoRA's attention-kwargs name, `_get_signature_keys`, callbacks,
`from_pipe`, `help`) sees what it sees on the parent."""

from __future__ import annotations

import inspect
import pydoc
import typing

import numpy as np
import pytest
import torch
from diffusers import (
    FluxPipeline,
    StableDiffusionXLControlNetPAGPipeline,
    StableDiffusionXLPAGPipeline,
    StableDiffusionXLPipeline,
)
from PIL import Image

from pipeline.guidance import (
    CONTROLNET,
    FLUX,
    GUIDANCE_ARGUMENTS,
    PLADIS_ARGUMENTS,
    SDXL,
    SDXL_SEG,
    keywords_of,
    pladis_settings,
)
from pipeline.pipeline_controlnet import PLADISStableDiffusionXLControlNetPipeline
from pipeline.pipeline_flux_pladis import PLADISFluxPipeline
from pipeline.pipeline_sdxl import PLADISStableDiffusionXLPipeline
from pipeline.pipeline_sdxl_seg import PLADISStableDiffusionXLSEGPipeline
from scripts.cli.assets import TINY_CONTROL_IMAGE, TINY_FLUX_SCHNELL, TINY_SDXL, TINY_SDXL_CONTROLNET
from tests.tiny import CallCounter, processors_by_name, same_processor_objects

# --pipeline name → (PLADIS class, its diffusers parent, tiny model)
CASES = {
    SDXL: (PLADISStableDiffusionXLPipeline, StableDiffusionXLPipeline, TINY_SDXL),
    SDXL_SEG: (PLADISStableDiffusionXLSEGPipeline, StableDiffusionXLPAGPipeline, TINY_SDXL),
    CONTROLNET: (
        PLADISStableDiffusionXLControlNetPipeline,
        StableDiffusionXLControlNetPAGPipeline,
        TINY_SDXL_CONTROLNET,
    ),
    FLUX: (PLADISFluxPipeline, FluxPipeline, TINY_FLUX_SCHNELL),
}
TABLE = {argument.name for argument in GUIDANCE_ARGUMENTS}


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    return request.param


@pytest.fixture(scope="module")
def pipes(case):
    cls, parent, path = CASES[case]
    pipe = cls.from_pretrained(path, local_files_only=True)
    return pipe, parent.from_pipe(pipe)


def parameters(function) -> list[inspect.Parameter]:
    return list(inspect.signature(function).parameters.values())


def test_each_pipeline_takes_the_keywords_the_table_gives_it():
    names = {case: [argument.name for argument in keywords_of(case)] for case in CASES}
    assert all({"pladis_scale", "pladis_alpha"} <= set(names[case]) for case in CASES)
    assert {name for name in names[SDXL_SEG] if not name.startswith("pladis_")} == {
        "pag_scale",
        "pag_adaptive_scale",
        "pag_applied_layers",
        "seg_scale",
        "seg_blur_sigma",
        "seg_applied_layers",
    }
    assert set(names[CONTROLNET]) - set(names[SDXL_SEG]) == {"pladis_controlnet"}
    assert set(names[FLUX]) - set(names[SDXL]) == {"pladis_single_blocks"}


def test_every_pladis_keyword_of_the_table_reaches_the_attention_as_a_setting():
    """A `pladis_*` row is a `PLADISSettings` field: the pipelines hand it to the attention, never drop it; left at
    None (every row's default) it is not given, and the call keeps what an enclosing apply_pladis set."""
    assert {a.name for a in GUIDANCE_ARGUMENTS if a.name.startswith("pladis_")} <= set(PLADIS_ARGUMENTS)
    assert all(a.default is None for a in GUIDANCE_ARGUMENTS if a.name.startswith("pladis_"))
    given = {
        "pladis_scale": 2.0,
        "pladis_alpha": 2.0,
        "pladis_controlnet": True,
        "pladis_single_blocks": False,
        "pladis_start": 0.25,
        "pladis_stop": 0.75,
        "pladis_layers": ("mid",),
    }
    assert set(given) == {a.name for a in GUIDANCE_ARGUMENTS if a.name.startswith("pladis_")}
    pipe = StableDiffusionXLPipeline.from_pretrained(TINY_SDXL, local_files_only=True)
    settings = pladis_settings(pipe, given)
    assert {name: getattr(settings, name) for name in given} == given
    assert pladis_settings(pipe, dict.fromkeys(given)) is None


def test_signature_is_the_parents_exact_parameters_plus_the_tables_keywords(case):
    cls, parent, _ = CASES[case]
    ours, theirs = parameters(cls.__call__), parameters(parent.__call__)
    keywords = {argument.name: argument for argument in keywords_of(case)}
    # Every parent parameter the table does not define: same name, order, kind, default and annotation.
    assert [p for p in ours if p.name not in keywords] == [p for p in theirs if p.name not in keywords]
    assert [p.name for p in ours] == [p.name for p in theirs if p.kind is not p.VAR_KEYWORD] + [
        name for name in keywords if name not in {p.name for p in theirs}
    ] + [p.name for p in theirs if p.kind is p.VAR_KEYWORD]
    by_name = {p.name: p for p in ours}
    parents = {p.name: p for p in theirs}
    for name, argument in keywords.items():
        assert by_name[name].default == argument.default
        if name in parents:  # the PAG parents' pag_scale / pag_adaptive_scale: the parent's place, kind and type
            assert by_name[name].kind is parents[name].kind and by_name[name].annotation == parents[name].annotation
        else:
            assert by_name[name].kind is inspect.Parameter.KEYWORD_ONLY
            assert by_name[name].annotation == argument.annotation
    sig = inspect.signature(cls.__call__)
    assert sig.return_annotation == inspect.signature(parent.__call__).return_annotation
    assert set(typing.get_type_hints(cls.__call__)) >= {"prompt", "num_inference_steps", "pladis_scale", "return"}


def _lines_in_order(part: list[str], whole: list[str]) -> bool:
    rest = iter(whole)
    return all(any(line == candidate for candidate in rest) for line in part)


def test_docstring_is_the_parents_plus_the_tables_arguments(case):
    cls, parent, _ = CASES[case]
    ours, theirs = inspect.getdoc(cls.__call__), inspect.getdoc(parent.__call__)
    keywords = keywords_of(case)
    # The parent's text in order, except the entries of parameters whose default the table sets (pag_scale).
    kept, skipped_indent = [], None
    for line in theirs.splitlines():
        indent = len(line) - len(line.lstrip())
        if skipped_indent is not None and (not line.strip() or indent <= skipped_indent):
            skipped_indent = None
        if line.strip().split(" (")[0] in TABLE:
            skipped_indent = indent
        if skipped_indent is None:
            kept.append(line)
    assert _lines_in_order(kept, ours.splitlines())
    for argument in keywords:
        assert f"    {argument.name} (`{argument.annotation}`, *optional*, defaults to {argument.default!r}):" in ours
        assert " ".join(argument.help.split()) in " ".join(ours.split())
    assert ours.index("Args:") < ours.index("pladis_scale (") < ours.index("Returns:")
    rendered = pydoc.render_doc(cls.__call__, renderer=pydoc.plaintext)  # what help(pipe) prints
    assert "prompt: str | list[str] = None" in rendered and "pladis_scale: 'float | None' = None" in rendered


def _call_values(parent, pipe, case: str) -> dict:
    """A value for every positional-or-keyword parameter of the parent's `__call__`, in order: its default, except
    a tiny run's prompt, size, steps, numpy output, a fixed generator and the control image."""
    given = {
        "prompt": "a photo of a red cube",
        "height": 64,
        "width": 64,
        "num_inference_steps": 2,
        "output_type": "np",
        "generator": torch.Generator("cpu").manual_seed(0),
        "image": Image.open(TINY_CONTROL_IMAGE).convert("RGB"),
        "max_sequence_length": 32,
        "pag_scale": 0.0,  # the stock PAG parents default to PAG on (3.0); the PLADIS pipelines to CFG
    }
    return {
        p.name: given.get(p.name, p.default)
        for p in parameters(parent.__call__)[1:]
        if p.kind is p.POSITIONAL_OR_KEYWORD
    }


def _images(pipe, *args, **kwargs) -> np.ndarray:
    return pipe(*args, **kwargs).images


@pytest.mark.slow  # per pipeline
def test_every_parameter_binds_positionally_and_by_keyword_as_in_the_parent(case, pipes):
    pipe, stock = pipes
    _, parent, _ = CASES[case]
    stock_images = _images(stock, *_call_values(parent, pipe, case).values())
    positional = _images(pipe, *_call_values(parent, pipe, case).values())
    by_keyword = _images(pipe, **_call_values(parent, pipe, case))
    np.testing.assert_array_equal(positional, stock_images)
    np.testing.assert_array_equal(by_keyword, stock_images)
    # The parent's docs' way: the prompt positionally, the rest by keyword; with PLADIS on, still one binding.
    values = _call_values(parent, pipe, case)
    prompt, boosted = values.pop("prompt"), _images(pipe, **_call_values(parent, pipe, case), pladis_scale=2.0)
    np.testing.assert_array_equal(_images(pipe, prompt, **values, pladis_scale=2.0), boosted)
    assert np.abs(boosted - stock_images).max() > 1e-3


@pytest.mark.slow
def test_a_shared_parameter_passed_positionally_is_the_tables_keyword():
    """pag_scale sits where StableDiffusionXLPAGPipeline has it: given positionally, PAG runs as given by keyword."""
    pipe = PLADISStableDiffusionXLSEGPipeline.from_pretrained(TINY_SDXL, local_files_only=True)
    values = _call_values(StableDiffusionXLPAGPipeline, pipe, SDXL_SEG)
    values["pag_scale"] = 2.0
    positional = _images(pipe, *values.values())
    values["generator"] = torch.Generator("cpu").manual_seed(0)
    np.testing.assert_array_equal(positional, _images(pipe, **values))
    values["generator"], values["pag_scale"] = torch.Generator("cpu").manual_seed(0), 0.0
    assert np.abs(positional - _images(pipe, **values)).max() > 1e-3


FOREIGN_KEYWORDS = {  # keyword → how the error names it, where the pipeline does not take it
    "pladis_scael": "'pladis_scael' (did you mean 'pladis_scale'?)",
    "pladis_controlnet": "'pladis_controlnet' (a keyword of the controlnet pipeline only)",
    "seg_scale": "'seg_scale' (a keyword of the controlnet and sdxl-seg pipelines only)",
    "kernel": "'kernel' (a PLADISSettings field, not a pipeline keyword: `with apply_pladis(pipe, PLADISSettings(",
}


def test_a_pladis_keyword_the_pipeline_does_not_take_raises_naming_it(case, pipes):
    pipe, _ = pipes
    denoiser = pipe.unet if hasattr(pipe, "unet") else pipe.transformer
    before, counter = processors_by_name(denoiser), CallCounter(pipe.vae)
    accepted = [argument.name for argument in keywords_of(case)]
    foreign = {keyword: named for keyword, named in FOREIGN_KEYWORDS.items() if keyword not in accepted}
    assert "pladis_scael" in foreign
    for keyword, named in foreign.items():
        with pytest.raises(TypeError, match=f"unexpected keyword argument '{keyword}'") as error:
            pipe("a cat", num_inference_steps=1, **{keyword: 2})
        assert named in str(error.value) and f"its PLADIS keywords are {', '.join(accepted)}" in str(error.value)
    counter.remove()
    assert counter.count == 0 and same_processor_objects(denoiser, before)


def test_other_unknown_keywords_fail_or_pass_as_in_the_parent(case, pipes):
    pipe, stock = pipes
    if any(p.kind is p.VAR_KEYWORD for p in parameters(type(stock).__call__)):
        # SDXL's **kwargs takes the deprecated callback arguments, in both.
        for target in (pipe, stock):
            with pytest.warns(FutureWarning, match="callback_steps"):
                target("a cat", num_inference_steps=1, height=64, width=64, output_type="latent", callback_steps=1)
        return
    for target in (pipe, stock):
        with pytest.raises(TypeError, match="unexpected keyword argument 'num_inference_step'"):
            target("a cat", num_inference_step=1)


def test_diffusers_signature_machinery_sees_what_it_sees_on_the_parent(case, pipes):
    cls, parent, _ = CASES[case]
    pipe, stock = pipes

    def attention_kwargs_name(pipeline_class):  # diffusers' LoRA tests: determine_attention_kwargs_name
        names = inspect.signature(pipeline_class.__call__).parameters
        return next(n for n in ("cross_attention_kwargs", "joint_attention_kwargs", "attention_kwargs") if n in names)

    assert attention_kwargs_name(cls) == attention_kwargs_name(parent)
    assert cls._get_signature_keys(cls) == parent._get_signature_keys(parent)
    assert cls._callback_tensor_inputs == parent._callback_tensor_inputs
    bound = inspect.signature(pipe.__call__).parameters  # on an instance, as the callback tests read it
    assert list(bound) == [p.name for p in parameters(cls.__call__)[1:]]
    assert {"callback_on_step_end", "callback_on_step_end_tensor_inputs", "num_images_per_prompt"} <= set(bound)
    # from_pipe both ways shares the components.
    assert cls.from_pipe(stock).components.keys() == stock.components.keys()
    assert all(a is b for a, b in zip(cls.from_pipe(stock).components.values(), stock.components.values(), strict=True))


@pytest.mark.slow  # per pipeline
def test_callbacks_see_and_change_the_same_tensors_as_in_the_parent(case, pipes):
    pipe, stock = pipes
    _, parent, _ = CASES[case]
    inputs = list(parent._callback_tensor_inputs)
    seen = {}

    def zero_latents_at_the_end(pipeline, step, timestep, callback_kwargs):
        seen[type(pipeline)] = sorted(callback_kwargs)
        if step == pipeline.num_timesteps - 1:
            callback_kwargs["latents"] = torch.zeros_like(callback_kwargs["latents"])
        return callback_kwargs

    outputs = []
    for target in (pipe, stock):
        values = _call_values(parent, pipe, case)
        values.update(callback_on_step_end=zero_latents_at_the_end, callback_on_step_end_tensor_inputs=inputs)
        values["output_type"] = "latent"
        outputs.append(target(**values).images)
    assert seen[type(pipe)] == seen[type(stock)] == sorted(inputs)
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)
    assert not outputs[0].any()
