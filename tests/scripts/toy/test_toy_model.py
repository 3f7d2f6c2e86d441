"""The trained toy (`asset/toy-sdxl`) loads offline in the stock and PLADIS pipelines and generates; the trainer
that made it runs end to end, deterministically, on a few images and steps."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLPipeline
from safetensors import safe_open

from pipeline.pipeline_sdxl import PLADISStableDiffusionXLPipeline
from scripts.cli.assets import REPO_ROOT, TOY_MODEL, TOY_PROMPT, is_tiny_asset, repository_relative
from scripts.toy import train as train_toy

TOY = REPO_ROOT / TOY_MODEL


STORED_DTYPES = {"unet": "F16", "vae": "F16", "text_encoder": "F32", "text_encoder_2": "F32"}


def test_toy_is_small_safetensors_with_a_16_token_tokenizer():
    """UNet and VAE in fp16; the small text encoders in fp32, the dtype transformers then loads them in."""
    weights = sorted(TOY.rglob("*.safetensors"))
    assert {path.parent.name for path in weights} == set(STORED_DTYPES)
    assert sum(path.stat().st_size for path in TOY.rglob("*") if path.is_file()) <= 20 * 2**20
    for path in weights:
        with safe_open(str(path), "pt") as handle:
            assert {handle.get_slice(name).get_dtype() for name in handle.keys()} == {STORED_DTYPES[path.parent.name]}
    assert json.loads((TOY / "tokenizer" / "tokenizer_config.json").read_text())["model_max_length"] == 16
    assert "rebuild" in json.loads((TOY / "training.json").read_text())
    assert not is_tiny_asset(TOY_MODEL)  # it gets real steps and its own 32×32 size in the scripts


def test_toy_generates_with_the_stock_and_the_pladis_pipeline():
    call = {"num_inference_steps": 2, "guidance_scale": 5.0}
    stock = StableDiffusionXLPipeline.from_pretrained(str(TOY), dtype=torch.float32, local_files_only=True)
    image = stock(TOY_PROMPT, generator=torch.Generator().manual_seed(0), **call).images[0]
    assert image.size == (32, 32)
    pipe = PLADISStableDiffusionXLPipeline.from_pretrained(str(TOY), dtype=torch.float32, local_files_only=True)
    plain = pipe(TOY_PROMPT, generator=torch.Generator().manual_seed(0), pladis_scale=0.0, **call).images[0]
    boosted = pipe(TOY_PROMPT, generator=torch.Generator().manual_seed(0), pladis_scale=2.0, **call).images[0]
    np.testing.assert_array_equal(np.asarray(plain), np.asarray(image))
    assert np.abs(np.asarray(plain).astype(int) - np.asarray(boosted)).max() > 0


def test_toy_loads_and_generates_from_python_without_a_dtype():
    pipe = PLADISStableDiffusionXLPipeline.from_pretrained(str(TOY), local_files_only=True)
    assert {pipe.unet.dtype, pipe.vae.dtype, pipe.text_encoder.dtype, pipe.text_encoder_2.dtype} == {torch.float32}
    assert pipe(TOY_PROMPT, num_inference_steps=1, pladis_scale=2.0).images[0].size == (32, 32)


def test_toy_tokenizer_makes_every_word_one_token_and_fits_the_longest_caption():
    tokenizer = train_toy.toy_tokenizer()
    ids = tokenizer(TOY_PROMPT).input_ids
    assert len(ids) == len(TOY_PROMPT.split()) + 2 <= tokenizer.model_max_length == 16


@pytest.fixture(scope="module")
def two_tiny_runs(tmp_path_factory):
    options = [
        "--images",
        "64",
        "--vae-steps",
        "2",
        "--vae-batch",
        "8",
        "--clip-steps",
        "2",
        "--clip-batch",
        "16",
        "--unet-steps",
        "3",
        "--batch",
        "4",
        "--snapshot-every",
        "2",
    ]
    threads = torch.get_num_threads()
    try:  # the trainer fixes its thread count (results depend on it); later tests get theirs back
        return [train_toy.main([*options, "--out", str(tmp_path_factory.mktemp("toy") / "run")]) for _ in range(2)]
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow  # trains
def test_trainer_saves_a_loadable_pipeline_and_records_the_rebuild_command(two_tiny_runs):
    out = two_tiny_runs[0]
    record = json.loads((out / "training.json").read_text())
    assert record["unet_steps"] == 3 and "snapshot" not in record
    assert "--unet-steps 3 " in record["rebuild"] and record["torch_threads"] == train_toy.THREADS
    pipe = StableDiffusionXLPipeline.from_pretrained(str(out), local_files_only=True)  # float32 without a dtype
    assert pipe.vae.config.scaling_factor == 1.0 and len(pipe.vae.config.latents_mean) == 4
    assert pipe("a red circle on the left", num_inference_steps=1).images[0].size == (32, 32)


@pytest.mark.slow  # trains
def test_trainer_is_deterministic(two_tiny_runs):
    first, second = two_tiny_runs
    for part in ("unet/diffusion_pytorch_model.safetensors", "text_encoder_2/model.safetensors"):
        assert (first / part).read_bytes() == (second / part).read_bytes(), part


def test_the_scripts_default_to_the_toy_wherever_it_fits_and_say_when_weights_are_random(tmp_path, capsys):
    from scripts import attention_maps, compare, generate

    args = compare.parse_args([])
    assert (args.model, args.prompt, args.steps, args.height) == (repository_relative(TOY_MODEL), TOY_PROMPT, 20, None)
    for pipeline in ("sdxl-seg", "auto"):  # SDXL pipelines: the toy is one
        assert compare.parse_args(["--pipeline", pipeline]).model == repository_relative(TOY_MODEL)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(TOY_PROMPT + "\n")
    made = generate.parse_args(["--prompts", str(prompts), "--out", str(tmp_path / "out")])
    assert (made.model, made.steps) == (repository_relative(TOY_MODEL), 20)
    assert "random weights" not in capsys.readouterr().err
    assert compare.parse_args(["--model", "asset/tiny-sdxl"]).prompt.startswith("a photo of an astronaut")
    assert compare.parse_args(["--pipeline", "flux"]).model == "asset/tiny-flux-schnell"
    notes = [line for line in capsys.readouterr().err.splitlines() if "random weights" in line]
    assert [note.split()[1] for note in notes] == ["asset/tiny-sdxl", "asset/tiny-flux-schnell"]  # one line each
    maps = attention_maps.parse_args([])
    assert maps.model == repository_relative(TOY_MODEL) and maps.tokens == [
        "red",
        "circle",
        "left",
        "blue",
        "square",
        "right",
    ]
    assert attention_maps.parse_args(["--prompt", "a green triangle on the left"]).tokens is None
