"""Recorded cross-attention maps: softmax and PLADIS maps from the same scores, checked against independent
computations, recording that leaves the generation unchanged, and the heat-map grid script."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from PIL import Image

from attention import PLADISAttnProcessor
from attention.diagnostics.attention_maps import AttentionMapRecorder, AttentionMapStore, recording_attention_maps
from attention.kernels.reference import reference_pladis_weights, reference_sparse_map
from attention.settings import PLADISSettings
from pipeline.pipeline_sdxl import PLADISStableDiffusionXLPipeline
from scripts import attention_maps
from tests.tiny import processors_by_name, run_pipe, same_processor_objects

GRID = 4  # a 4×4 token grid, so the maps need no resizing
TEXT_TOKENS = 5


@pytest.fixture
def tiny_cross_attention():
    torch.manual_seed(0)
    attn = Attention(query_dim=8, cross_attention_dim=6, heads=2, dim_head=4).eval()
    hidden = torch.randn(2, GRID * GRID, 8)  # batch [uncond, cond]
    text = torch.randn(2, TEXT_TOKENS, 6) * 3  # large logits, so entmax is really sparse
    return attn, hidden, text


def independent_logits(attn, hidden, text):
    """z = QKᵀ/√d per head, for one batch row, straight from the projections."""
    query = attn.to_q(hidden).view(-1, attn.heads, 4).transpose(0, 1)
    key = attn.to_k(text).view(-1, attn.heads, 4).transpose(0, 1)
    return query @ key.transpose(-1, -2) / 2.0  # √4


def record_once(attn, hidden, text, processor, pladis_scale):
    store = AttentionMapStore()
    store.latent_size.height = store.latent_size.width = GRID
    store.start_step()
    recorder = AttentionMapRecorder(processor, store, "mid", PLADISSettings(pladis_scale), condition_rows=slice(1, 2))
    with torch.no_grad():
        output = recorder(attn, hidden, text)
    return store, output


def test_dense_maps_at_scale_zero_are_the_softmax_maps_of_the_conditional_row(tiny_cross_attention):
    attn, hidden, text = tiny_cross_attention
    store, output = record_once(attn, hidden, text, AttnProcessor2_0(), pladis_scale=0.0)
    with torch.no_grad():
        expected = independent_logits(attn, hidden[1], text[1]).softmax(dim=-1).mean(dim=0)  # heads averaged
        stock = AttnProcessor2_0()(attn, hidden, text)
    expected = expected.T.reshape(TEXT_TOKENS, GRID, GRID)
    torch.testing.assert_close(store.maps("dense"), expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(store.maps("pladis"), expected, atol=1e-6, rtol=0)  # λ = 0: the same map
    torch.testing.assert_close(output, stock, atol=0, rtol=0)  # the wrapped processor's output, untouched
    uncond = independent_logits(attn, hidden[0], text[0]).softmax(dim=-1).mean(dim=0)
    assert (store.maps("dense") - uncond.T.reshape(TEXT_TOKENS, GRID, GRID)).abs().max() > 1e-3  # cond row only


def test_pladis_maps_extrapolate_towards_entmax15(tiny_cross_attention):
    attn, hidden, text = tiny_cross_attention
    processor = PLADISAttnProcessor(2.0)
    store, output = record_once(attn, hidden, text, processor, pladis_scale=2.0)
    with torch.no_grad():
        logits = independent_logits(attn, hidden[1], text[1]).double()
        sparse = reference_sparse_map(logits, 1.5)
        expected = reference_pladis_weights(logits, 2.0, 1.5).mean(dim=0).T.reshape(TEXT_TOKENS, GRID, GRID)
        direct = processor(attn, hidden, text)
    assert (sparse == 0).any()  # the test case is really sparse
    torch.testing.assert_close(store.maps("pladis").double(), expected, atol=1e-5, rtol=0)
    assert store.maps("pladis").min() < 0 < (store.maps("pladis") - store.maps("dense")).abs().max()
    torch.testing.assert_close(output, direct, atol=0, rtol=0)


@pytest.fixture
def pipe(tiny_sdxl_path):
    return PLADISStableDiffusionXLPipeline.from_pretrained(tiny_sdxl_path, local_files_only=True)


def test_recording_leaves_the_pladis_generation_unchanged_and_restores_processors(pipe):
    expected = run_pipe(pipe, pladis_scale=2.0)
    before = processors_by_name(pipe.unet)
    store = AttentionMapStore()
    with recording_attention_maps(pipe.unet, store, 2.0, condition_rows=slice(1, 2)):
        recorded = run_pipe(pipe)  # pladis_scale=0 inside: the block installed PLADIS itself
    np.testing.assert_array_equal(recorded, expected)
    assert same_processor_objects(pipe.unet, before)
    assert store.counts == {"down": 2 * 8, "mid": 2 * 2, "up": 2 * 12}  # 22 attn2 layers × 2 steps
    for kind in ("dense", "pladis"):  # every pixel's maps sum to 1 over the keys, also after upsampling
        totals = store.maps(kind).sum(dim=0)
        assert totals.shape == (32, 32)
        torch.testing.assert_close(totals, torch.ones_like(totals), atol=1e-4, rtol=0)


@pytest.mark.slow
def test_recorders_survive_the_seg_pipelines_own_processor_swaps(tiny_sdxl_path):
    from pipeline.pipeline_sdxl_seg import PLADISStableDiffusionXLSEGPipeline

    seg = PLADISStableDiffusionXLSEGPipeline.from_pretrained(tiny_sdxl_path, local_files_only=True)
    options = {"seg_scale": 3.0, "seg_blur_sigma": 100.0, "num_inference_steps": 1}
    expected = run_pipe(seg, pladis_scale=2.0, **options)
    store = AttentionMapStore()
    with recording_attention_maps(seg.unet, store, 2.0, groups=("mid",), condition_rows=slice(1, 2)):
        recorded = run_pipe(seg, **options)  # batch [uncond, cond, perturbed]: row 1 is recorded
    np.testing.assert_array_equal(recorded, expected)
    assert store.counts == {"mid": 2}


@pytest.mark.slow
def test_steps_and_layer_groups_choose_what_is_recorded(pipe):
    store = AttentionMapStore(steps=[1])
    with recording_attention_maps(pipe.unet, store, 1.5, groups=("mid",), condition_rows=slice(1, 2)):
        run_pipe(pipe)
    assert store.counts == {"mid": 2}  # the 2 mid-block cross-attentions, at step 1 only
    with pytest.raises(ValueError, match="no attention maps"):
        store.maps("dense", ["up"])
    with pytest.raises(ValueError, match="unknown layer groups"):
        with recording_attention_maps(pipe.unet, AttentionMapStore(), 1.5, groups=("middle",)):
            pass


@pytest.mark.slow
def test_script_writes_a_row_per_kind_and_a_column_per_token(tmp_path):
    path = attention_maps.main(
        [
            "--model",
            "asset/tiny-sdxl",
            "--prompt",
            "a red cube on a blue ball",
            "--tokens",
            "red,cube,ball",
            "--steps",
            "1",
            "--layer-groups",
            "mid,up",
            "--out",
            str(tmp_path / "maps.png"),
        ]
    )
    grid = Image.open(path)
    # image + 3 tokens; softmax row and PLADIS row, then the colour bar and the caption
    assert grid.width == 4 * 256 and grid.height > 2 * (24 + 256)
    settings = json.loads(path.with_suffix(".json").read_text())
    assert settings["tokens"] == ["red", "cube", "ball"]
    assert settings["recorded_layer_calls"] == {"mid": 2, "up": 12}
    pixels = np.asarray(grid.convert("RGB")).astype(int)
    softmax_red, pladis_red = pixels[24:280, 256:512], pixels[304:560, 256:512]
    assert np.abs(softmax_red - pladis_red).max() > 0  # the two kinds of maps differ


def test_script_rejects_tokens_not_in_the_prompt_and_flux(tmp_path, capsys):
    with pytest.raises(SystemExit):
        attention_maps.parse_args(["--pipeline", "flux"])
    assert "U-Net" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:  # while parsing, from the tokenizer alone
        attention_maps.main(["--tokens", "zebra", "--steps", "1", "--out", str(tmp_path / "x.png")])
    assert stop.value.code == 2 and "none of --tokens ['zebra'] is a token of the prompt" in capsys.readouterr().err
