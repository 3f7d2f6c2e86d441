"""Every entry point refuses every bad PLADIS value (tests/bad_values.py) with the TypeError/ValueError of
`attention.validation`, whose message names the argument and the values it accepts, before any work and
leaving the model as it was: one table per door (the checks, `PLADISSettings`, the processors, the math
functions, `apply_pladis`, the pipelines' call, the command line, the web demo's requests)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from attention import (
    PLADISAttnProcessor,
    PLADISFluxAttnProcessor,
    PLADISJointAttnProcessor,
    PLADISSanaAttnProcessor,
    apply_pladis,
    entmax_attention,
    pladis_scaled_dot_product_attention,
    pladis_weights,
    text_block_pladis_attention,
)
from attention.settings import PLADISSettings
from attention.validation import (
    check_flag,
    check_pladis_alpha,
    check_pladis_layers,
    check_pladis_scale,
    check_pladis_window,
)
from pipeline.pipeline_flux_pladis import PLADISFluxPipeline
from pipeline.pipeline_sdxl import PLADISStableDiffusionXLPipeline
from pipeline.pipeline_sdxl_seg import PLADISStableDiffusionXLSEGPipeline
from scripts import compare, demo
from scripts.cli.assets import TINY_FLUX_SCHNELL, TINY_SDXL
from tests.bad_values import (
    BAD_ALPHAS,
    BAD_SCALES,
    BAD_TEXT_LENGTHS,
    BAD_WINDOWS,
    FLAGS,
    SCALE,
    UNKNOWN_SDXL_LAYERS,
    refusal,
    rows,
)
from tests.family_runs import denoiser
from tests.scripts.cli.test_cli_validation import no_model_loads, usage_error  # noqa: F401
from tests.tiny import CallCounter, processors_by_name, run_pipe, same_processor_objects

EVERY_ARGUMENT = ("pladis_scale", "pladis_alpha", "window", *FLAGS, "pladis_layers")
BESIDE_SCALE = EVERY_ARGUMENT[1:]


def unknown_layer_rows(scales: tuple[float, ...] = (SCALE,)) -> list:
    """Rows with well-formed layer ids that name no text-attention layer of the tiny SDXL (refused at λ = 0 too)."""
    return [
        pytest.param({"pladis_scale": scale, "pladis_layers": ids}, ValueError, "pladis_layers", id=f"{ids}-λ={scale}")
        for ids in UNKNOWN_SDXL_LAYERS
        for scale in scales
    ]


def check(argument: str, keywords: dict) -> object:
    """The `attention.validation` check of `argument`, on the row's value."""
    if argument == "window":
        return check_pladis_window(keywords["pladis_start"], keywords["pladis_stop"])
    if argument in FLAGS:
        return check_flag(argument, keywords[argument])
    single = {
        "pladis_scale": check_pladis_scale,
        "pladis_alpha": check_pladis_alpha,
        "pladis_layers": check_pladis_layers,
    }
    return single[argument](keywords[argument])


@pytest.mark.parametrize("keywords,error,argument", rows(*EVERY_ARGUMENT))
def test_the_checks_refuse_each_bad_value_naming_it(keywords, error, argument):
    with pytest.raises(error, match=refusal(argument)) as refused:
        check(argument, keywords)
    if argument in ("pladis_scale", "pladis_alpha", *FLAGS):
        assert str(refused.value).endswith(repr(keywords[argument]))  # and the value given


@pytest.mark.parametrize("keywords,error,argument", rows(*EVERY_ARGUMENT))
def test_settings_refuse_each_bad_value(keywords, error, argument):
    with pytest.raises(error, match=refusal(argument)):
        PLADISSettings(**keywords)


PROCESSORS = [PLADISAttnProcessor, PLADISSanaAttnProcessor, PLADISJointAttnProcessor, PLADISFluxAttnProcessor]


@pytest.mark.parametrize("processor", PROCESSORS, ids=lambda cls: cls.__name__)
@pytest.mark.parametrize(
    "keywords,error,argument",
    [
        *rows("pladis_scale", "pladis_alpha"),
        pytest.param({"pladis_scale": SCALE, "text_length": 77}, TypeError, "text_length", id="text_length=77"),
    ],
)
def test_processors_made_by_hand_refuse_each_bad_value(processor, keywords, error, argument):
    with pytest.raises(error, match=refusal(argument)):
        processor(**keywords)


QUERY = torch.randn(1, 1, 4, 8)
FUNCTIONS = {
    "pladis_scaled_dot_product_attention": lambda scale, alpha: pladis_scaled_dot_product_attention(
        QUERY, QUERY, QUERY, scale, alpha
    ),
    "pladis_weights": lambda scale, alpha: pladis_weights(QUERY, scale, alpha),
    "text_block_pladis_attention": lambda scale, alpha, text_length=2: text_block_pladis_attention(
        QUERY, QUERY, QUERY, text_length, scale, alpha
    ),
    "entmax_attention": lambda scale, alpha: entmax_attention(QUERY, alpha),
}
FUNCTION_ROWS = (
    [
        pytest.param(
            function, {"scale": value, "alpha": 1.5}, error, "pladis_scale", id=f"{function}-pladis_scale={value!r}"
        )
        for function in FUNCTIONS
        if function != "entmax_attention"
        for value, error in BAD_SCALES
    ]
    + [
        pytest.param(
            function, {"scale": SCALE, "alpha": value}, error, "pladis_alpha", id=f"{function}-pladis_alpha={value!r}"
        )
        for function in FUNCTIONS
        for value, error in BAD_ALPHAS
    ]
    + [
        pytest.param(
            "text_block_pladis_attention",
            {"scale": SCALE, "alpha": 1.5, "text_length": value},
            error,
            "text_length",
            id=f"text_block_pladis_attention-text_length={value!r}",
        )
        for value, error in BAD_TEXT_LENGTHS
    ]
)


@pytest.mark.parametrize("function,arguments,error,argument", FUNCTION_ROWS)
def test_the_math_functions_refuse_each_bad_value(function, arguments, error, argument):
    with pytest.raises(error, match=refusal(argument)):
        FUNCTIONS[function](**arguments)


@pytest.fixture(scope="module")
def sdxl():
    pipe = PLADISStableDiffusionXLPipeline.from_pretrained(TINY_SDXL, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


APPLY_PLADIS_ROWS = [*rows(*EVERY_ARGUMENT), *rows(*BESIDE_SCALE, scale=0.0), *unknown_layer_rows(scales=(SCALE, 0.0))]


@pytest.mark.parametrize("keywords,error,argument", APPLY_PLADIS_ROWS)
def test_apply_pladis_refuses_each_bad_value_before_touching_the_model(sdxl, keywords, error, argument):
    before, hooks = processors_by_name(sdxl.unet), dict(sdxl.unet._forward_pre_hooks)
    with pytest.raises(error, match=refusal(argument)):
        with apply_pladis(sdxl, **keywords):
            pytest.fail("the body must not run")
    assert same_processor_objects(sdxl.unet, before) and dict(sdxl.unet._forward_pre_hooks) == hooks


@pytest.fixture(scope="module")
def pipelines(sdxl):
    flux = PLADISFluxPipeline.from_pretrained(TINY_FLUX_SCHNELL, local_files_only=True)
    flux.set_progress_bar_config(disable=True)
    return {"sdxl": sdxl, "sdxl-seg": PLADISStableDiffusionXLSEGPipeline.from_pipe(sdxl), "flux": flux}


def given(table: list) -> list:
    """The rows whose bad value is not None: a pipeline keyword given as None is not given (it keeps what an
    enclosing `apply_pladis` set)."""
    return [row for row in table if None not in row.values[0].values()]


# The SDXL pipeline takes λ, α, the window and the layers (pladis_controlnet: the ControlNet pipeline's).
SDXL_CALL_ROWS = given(
    [
        *rows("pladis_scale", "pladis_alpha", "window", "pladis_layers"),
        *rows("pladis_alpha", "window", "pladis_layers", scale=0.0),
        *unknown_layer_rows(scales=(SCALE, 0.0)),
    ]
)
PIPELINE_ROWS = [
    pytest.param(pipeline, *row.values, id=f"{pipeline}-{row.id}")
    for pipeline, table in (
        ("sdxl", SDXL_CALL_ROWS),
        ("sdxl-seg", given(rows("pladis_scale", "pladis_alpha"))),
        ("flux", given(rows("pladis_scale", "pladis_alpha", "window", "pladis_single_blocks", "pladis_layers"))),
    )
    for row in table
]


@pytest.mark.parametrize("pipeline,keywords,error,argument", PIPELINE_ROWS)
def test_a_pipeline_call_refuses_each_bad_value_before_any_denoiser_call(
    pipelines, pipeline, keywords, error, argument
):
    pipe = pipelines[pipeline]
    model = denoiser(pipe)
    before, hooks = processors_by_name(model), dict(model._forward_pre_hooks)
    counter = CallCounter(model)
    try:
        with pytest.raises(error, match=refusal(argument)):
            pipe("a photo of a red cube", num_inference_steps=2, height=64, width=64, **keywords)
    finally:
        counter.remove()
    assert counter.count == 0  # refused before any denoiser call
    assert same_processor_objects(model, before) and dict(model._forward_pre_hooks) == hooks


def test_a_pipeline_that_refused_every_bad_value_still_makes_the_same_images(sdxl):
    expected = run_pipe(sdxl, pladis_scale=SCALE)
    for keywords, error, _ in (row.values for row in SDXL_CALL_ROWS):
        with pytest.raises(error):
            run_pipe(sdxl, **keywords)
    np.testing.assert_array_equal(run_pipe(sdxl, pladis_scale=SCALE), expected)


def spelled(value: object) -> str | None:
    """A bad value as the command line spells it (None: a value no option can take: argparse itself refuses it)."""
    return str(value) if isinstance(value, float) else None


# Bad layer ids as the command line and the demo's text box take them (comma-separated).
LAYER_IDS_AS_TEXT = ["mid[", *(ids if isinstance(ids, str) else ",".join(ids) for ids in UNKNOWN_SDXL_LAYERS)]
COMMAND_LINE_ROWS = [
    *[
        pytest.param([f"{option}={prefix}{spelled(value)}"], "pladis_scale", id=f"{option}={prefix}{value}")
        for value, _ in BAD_SCALES
        if spelled(value) is not None
        for option, prefix in (("--pladis-scale", ""), ("--scales", "0,"))
    ],
    *[
        pytest.param([f"--pladis-alpha={spelled(value)}"], "pladis_alpha", id=f"--pladis-alpha={value}")
        for value, _ in BAD_ALPHAS
        if spelled(value) is not None
    ],
    *[
        pytest.param(
            [f"--pladis-start={spelled(start)}", f"--pladis-stop={spelled(stop)}"],
            "window",
            id=f"window={start},{stop}",
        )
        for (start, stop), _ in BAD_WINDOWS
        if spelled(start) is not None and spelled(stop) is not None
    ],
    *[
        pytest.param([f"--pladis-layers={ids}"], "pladis_layers", id=f"--pladis-layers={ids}")
        for ids in LAYER_IDS_AS_TEXT
    ],
]


@pytest.mark.parametrize("argv,argument", COMMAND_LINE_ROWS)
def test_the_command_line_refuses_each_bad_value_before_loading(argv, argument, capsys, no_model_loads):  # noqa: F811
    error = usage_error(compare.main, argv, capsys)
    assert re.search(refusal(argument), error), error


@pytest.fixture(scope="module")
def loaded():
    """The web demo's loaded arguments (`python -m scripts.demo --steps 4`), which each request starts from."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv(demo.ARGUMENTS_VARIABLE, raising=False)
        return demo.parse_args(["--steps", "4"])[1]


DEMO_ROWS = [
    *given(rows("pladis_scale", "pladis_alpha", "window")),
    *[
        pytest.param(
            {"pladis_scale": SCALE, "pladis_layers": ids}, ValueError, "pladis_layers", id=f"pladis_layers={ids}"
        )
        for ids in LAYER_IDS_AS_TEXT
    ],
]


@pytest.mark.parametrize("keywords,error,argument", DEMO_ROWS)
def test_the_web_demos_requests_refuse_each_bad_value(loaded, keywords, error, argument):
    """A request's values (from the page or the /compare API) get the command line's checks; every refusal is a
    ValueError there (the page shows it; the API returns it: tests/scripts/test_demo.py)."""
    page = {"prompt": "a red circle", "seed": 0, "negative_prompt": "", "pladis_alpha": 1.5, "steps": 4}
    with pytest.raises(ValueError, match=refusal(argument)):
        demo.request_arguments(loaded, **{**page, "guidance_scale": None, **keywords})
