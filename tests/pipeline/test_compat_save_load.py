"""`save_pretrained` → `from_pretrained` of the PLADIS pipelines: only safetensors are written, the folder loads
back offline with `use_safetensors=True` (as the PLADIS class, the stock one, or through `DiffusionPipeline`,
since `model_index.json` names the stock class) and gives the same images."""

from __future__ import annotations

import json

import numpy as np
import pytest
from diffusers import DiffusionPipeline, FluxPipeline, StableDiffusionXLPAGPipeline, StableDiffusionXLPipeline

from pipeline.pipeline_flux_pladis import PLADISFluxPipeline
from pipeline.pipeline_sdxl import PLADISStableDiffusionXLPipeline
from pipeline.pipeline_sdxl_seg import PLADISStableDiffusionXLSEGPipeline
from pipeline.saving import stock_pipeline_class
from scripts.cli.assets import TINY_FLUX_DEV, TINY_SDXL
from tests.family_runs import one_thread  # noqa: F401
from tests.tiny import run_pipe

PIPELINES = {
    "sdxl": (PLADISStableDiffusionXLPipeline, StableDiffusionXLPipeline, TINY_SDXL, {}),
    "sdxl-seg": (PLADISStableDiffusionXLSEGPipeline, StableDiffusionXLPAGPipeline, TINY_SDXL, {"pag_scale": 0.0}),
    "flux": (PLADISFluxPipeline, FluxPipeline, TINY_FLUX_DEV, {"max_sequence_length": 16}),
}


@pytest.mark.slow  # save and load per family
@pytest.mark.parametrize("kind", sorted(PIPELINES))
def test_saved_pladis_pipeline_loads_back_and_gives_the_same_images(tmp_path, kind):
    pladis_class, stock_class, path, options = PIPELINES[kind]
    pipe = pladis_class.from_pretrained(path, local_files_only=True, use_safetensors=True)
    expected = run_pipe(pipe, pladis_scale=2.0, **options)
    pipe.save_pretrained(tmp_path)
    suffixes = {".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl"}
    weights = [file.suffix for file in tmp_path.rglob("*") if file.suffix in suffixes]
    assert weights and set(weights) == {".safetensors"}
    reloaded = pladis_class.from_pretrained(tmp_path, local_files_only=True, use_safetensors=True)
    assert type(reloaded) is pladis_class
    np.testing.assert_allclose(run_pipe(reloaded, pladis_scale=2.0, **options), expected, atol=1e-5)
    as_stock = stock_class.from_pretrained(tmp_path, local_files_only=True, use_safetensors=True)
    np.testing.assert_allclose(run_pipe(as_stock, **options), run_pipe(pipe, **options), atol=1e-5)
    assert json.loads((tmp_path / "model_index.json").read_text())["_class_name"] == stock_class.__name__
    generic = DiffusionPipeline.from_pretrained(tmp_path, local_files_only=True, use_safetensors=True)
    assert type(generic) is stock_class
    np.testing.assert_allclose(run_pipe(generic, **options), run_pipe(pipe, **options), atol=1e-5)


def test_stock_class_is_the_nearest_diffusers_pipeline():
    assert stock_pipeline_class(PLADISStableDiffusionXLSEGPipeline) is StableDiffusionXLPAGPipeline
    assert stock_pipeline_class(PLADISFluxPipeline) is FluxPipeline
    with pytest.raises(TypeError, match="does not subclass a diffusers pipeline"):
        stock_pipeline_class(int)
