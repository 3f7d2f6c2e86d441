"""`scripts/evaluate.py`: the FID formula against independent computations, CLIPScore's definition, and the
whole table on tiny random CLIP models built offline (the plumbing, not the numbers)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

from scripts import evaluate
from scripts.dev.build_tiny_assets import tiny_clip_tokenizer

PROMPTS = ["a photo of a cat", "a red cube on a blue ball", "a dog on the table", "two horses in space"]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A random CLIP (32×32 images, 16-d embeddings) with the tiny tokenizer, saved and loaded like a real one."""
    torch.manual_seed(0)
    tokenizer = tiny_clip_tokenizer()
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = dict(
        image_size=32, patch_size=8, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4
    )
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    folder = tmp_path_factory.mktemp("tiny-clip")
    model.save_pretrained(folder)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def random_image(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8))


@pytest.fixture
def generated(tmp_path):
    """generate.py's layout: out/pladis_0, out/pladis_2 (NNNNN.png) and out/prompts.jsonl; plus a reference folder."""
    out = tmp_path / "out"
    for offset, folder in ((0, "pladis_0"), (100, "pladis_2")):
        (out / folder).mkdir(parents=True)
        for index in range(len(PROMPTS)):
            random_image(offset + index).save(out / folder / f"{index:05d}.png")
    (out / "prompts.jsonl").write_text(
        "".join(json.dumps({"prompt": p, "seed": i}) + "\n" for i, p in enumerate(PROMPTS))
    )
    reference = tmp_path / "reference"
    reference.mkdir()
    for index in range(5):
        random_image(500 + index).save(reference / f"coco_{index}.jpg")
    return out, reference


def test_frechet_distance_of_a_set_with_itself_is_zero():
    features = np.random.default_rng(0).normal(size=(50, 4))
    assert abs(evaluate.frechet_distance(features, features)) < 1e-8


def test_frechet_distance_of_a_shifted_set_is_the_squared_mean_shift():
    features = np.random.default_rng(1).normal(size=(40, 3))
    shift = np.array([0.5, -2.0, 1.0])
    assert evaluate.frechet_distance(features, features + shift) == pytest.approx(shift @ shift, rel=1e-9, abs=1e-8)


def test_frechet_distance_matches_the_eigenvalue_form_of_the_trace_term():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(60, 5)) @ rng.normal(size=(5, 5))
    b = rng.normal(size=(70, 5)) * np.array([1.0, 2.0, 0.5, 3.0, 1.5]) + 0.3
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # Tr((ΣaΣb)^½) = Σ √λ_i, λ_i the (real, non-negative) eigenvalues of ΣaΣb
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvals(cov_a @ cov_b).real, 0, None)).sum()
    expected = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_sqrt
    assert evaluate.frechet_distance(a, b) == pytest.approx(expected, rel=1e-7)
    with pytest.raises(ValueError, match="at least 2"):
        evaluate.frechet_distance(a[:1], b)


def test_clip_score_is_100_times_the_clamped_cosine_of_clip_embeddings(tiny_clip):
    images = [random_image(index) for index in range(len(PROMPTS))]
    scores = evaluate.clip_scores(evaluate.ClipModel(str(tiny_clip), "cpu"), images, PROMPTS)
    model, processor = CLIPModel.from_pretrained(tiny_clip), CLIPProcessor.from_pretrained(tiny_clip)
    with torch.no_grad():  # independently: the full CLIP forward's normalised embeddings
        output = model(**processor(text=PROMPTS, images=images, padding=True, return_tensors="pt"))
    cosines = (output.image_embeds * output.text_embeds).sum(-1)
    assert (cosines < 0).any() and (cosines > 0).any()  # the clamp matters in this case
    np.testing.assert_allclose(scores, (100 * cosines.clamp_min(0)).numpy(), atol=1e-4)


def test_table_has_a_row_per_folder_and_names_every_metric_honestly(tiny_clip, generated, tmp_path, capsys):
    out, reference = generated
    results = evaluate.main(
        [
            str(out / "pladis_0"),
            str(out / "pladis_2"),
            "--clip-model",
            str(tiny_clip),
            "--reference",
            str(reference),
            "--fid-features",
            "clip",
            "--pickscore-model",
            str(tiny_clip),
            "--imagereward-model",
            "ImageReward-v1.0",
            "--device",
            "cpu",
            "--batch-size",
            "3",
            "--json",
            str(tmp_path / "scores.json"),
        ]
    )
    table = capsys.readouterr().out
    assert [row["label"] for row in results["rows"]] == ["without PLADIS", "PLADIS 2"]
    assert all(row["images"] == len(PROMPTS) for row in results["rows"])
    for row in results["rows"]:
        assert 0 <= row["clip_score"] <= 100 and np.isfinite(row["fid"]) and row["fid"] > 0
        assert np.isfinite(row["pick_score"]) and "image_reward" not in row
    assert results["metrics"]["fid"].startswith("FID (CLIP features")  # never called plain "FID"
    assert results["metrics"]["image_reward"].startswith("n/a (")  # package or weights missing here, with why
    assert "| without PLADIS | 4 |" in table and "| PLADIS 2 | 4 |" in table and "FID: FID (CLIP features" in table
    assert json.loads((tmp_path / "scores.json").read_text()) == results


def test_fid_of_a_folder_against_itself_is_zero_and_inception_needs_weights(tiny_clip, generated):
    out, _ = generated
    folders = [str(out / "pladis_0"), str(out / "pladis_2")]
    common = ["--clip-model", str(tiny_clip), "--device", "cpu", "--reference", folders[0]]
    results = evaluate.main([*folders, *common, "--fid-features", "clip"])
    assert abs(results["rows"][0]["fid"]) < 1e-6 < results["rows"][1]["fid"]
    results = evaluate.main([*folders, *common])  # default Inception features, no weights file
    assert results["metrics"]["fid"].startswith("n/a (Inception weights unavailable")
    assert all("fid" not in row for row in results["rows"])


@pytest.mark.slow
def test_inception_features_load_from_a_local_torchvision_weights_file(tmp_path):
    from torchvision.models import inception_v3

    torch.manual_seed(0)
    weights = tmp_path / "inception.pth"
    torch.save(inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict(), weights)
    extract = evaluate.inception_features(weights, "cpu")
    features = extract([random_image(0), random_image(1)])
    assert features.shape == (2, 2048) and np.isfinite(features).all()


def save_with_prompts(folder, images, prompts):
    """generate.py's layout: NNNNN.png with the prompt in its text field, prompts.jsonl beside the folder."""
    from PIL.PngImagePlugin import PngInfo

    folder.mkdir(parents=True)
    for index, (image, prompt) in enumerate(zip(images, prompts, strict=True)):
        info = PngInfo()
        info.add_text("prompt", prompt)
        image.save(folder / f"{index:05d}.png", pnginfo=info)
    manifest = folder.parent / "prompts.jsonl"
    manifest.write_text("".join(json.dumps({"prompt": prompt, "seed": i}) + "\n" for i, prompt in enumerate(prompts)))


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """HF_HUB_OFFLINE=1 as huggingface_hub read it, with an empty local cache."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))


def test_a_clip_that_cannot_load_reads_na_with_the_reason_and_the_rest_is_scored(generated, tmp_path, offline):
    out, _ = generated
    folders = [str(out / "pladis_0"), str(out / "pladis_2")]
    results = evaluate.main([*folders, "--device", "cpu", "--pickscore-model", "someone/pickscore"])
    for metric, option in (("clip_score", "--clip-model openai/clip-vit-large-patch14"), ("pick_score", "--pick")):
        assert results["metrics"][metric].startswith(f"n/a ({option}"), results["metrics"][metric]
        assert "not in the local Hugging Face cache" in results["metrics"][metric]
    assert all("clip_score" not in row for row in results["rows"])
    not_a_clip = tmp_path / "not-a-clip"
    not_a_clip.mkdir()
    results = evaluate.main([*folders, "--device", "cpu", "--clip-model", str(not_a_clip), "--fid-features", "clip"])
    assert results["metrics"]["clip_score"].startswith(f"n/a (--clip-model {not_a_clip} could not be loaded: ")
    assert results["metrics"]["fid"].startswith("n/a (no --reference")
    assert "toy_image" not in results["metrics"]  # not toy captions: the toy scorer does not apply


def test_toy_folders_are_scored_offline_by_the_toy_scorer(tmp_path, offline, capsys):
    import random

    from scripts.toy.data import evaluation_scenes
    from scripts.toy.scorer import read_scene

    chosen = evaluation_scenes(6, seed=3)
    scenes, captions = [scene for scene, _, _ in chosen], [scene.caption(swap=swap) for scene, _, swap in chosen]
    drawn = [draw_toy_scene(scene, random.Random(index)) for index, scene in enumerate(scenes)]
    mirrored = [image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for image in drawn]  # objects on the wrong sides
    save_with_prompts(tmp_path / "out" / "pladis_0", drawn, captions)
    save_with_prompts(tmp_path / "out" / "pladis_2", mirrored, captions)
    results = evaluate.main([str(tmp_path / "out" / "pladis_0"), str(tmp_path / "out" / "pladis_2")])
    right, wrong = results["rows"]
    assert right["toy_image"] == right["toy_object"] == 1.0  # the scorer reads drawn objects exactly
    expected = np.mean([read_scene(image) == scene for image, scene in zip(mirrored, scenes, strict=True)])
    assert wrong["toy_image"] == expected < 1.0
    assert results["metrics"]["clip_score"].startswith("n/a (") and results["metrics"]["toy_image"].startswith("toy")
    table = capsys.readouterr().out
    assert "| toy colour ↑ | toy shape ↑ | toy object ↑ | toy image ↑ |" in table
    assert "| without PLADIS | 6 | n/a | n/a | n/a | n/a | 1.000 | 1.000 | 1.000 | 1.000 |" in table


def draw_toy_scene(scene, rng):
    from scripts.toy.data import draw_scene

    return draw_scene(scene, rng)


def test_toy_captions_the_scorer_cannot_read_are_named(tmp_path, offline):
    images = [Image.new("RGB", (32, 32))] * 2
    save_with_prompts(tmp_path / "out" / "pladis_0", images, ["a red circle on the left", "a blue square"])
    results = evaluate.main([str(tmp_path / "out" / "pladis_0")])
    assert results["metrics"]["toy_image"] == (
        "n/a (prompt 0 names one object; the toy scorer reads two-object captions)"
    )


def test_toy_is_an_option_anywhere_on_the_line_that_hands_the_rest_to_toy_eval(monkeypatch, capsys):
    import scripts.toy.evaluate

    seen = []
    monkeypatch.setattr(scripts.toy.evaluate, "main", lambda argv: seen.append(argv) or {"settings": {}})
    evaluate.main(["--out", "x", "--toy", "--count", "4"])
    evaluate.main(["--toy"])
    assert seen == [["--out", "x", "--count", "4"], []]
    with pytest.raises(SystemExit):
        evaluate.main(["--help"])
    assert "--toy" in capsys.readouterr().out


def test_generate_then_evaluate_works_offline_on_the_default_model(tmp_path, offline, capsys):
    """The README's path on a fresh machine: `generate` (the trained toy by default) then `evaluate` on its
    folders, with nothing downloaded: CLIPScore says why it is missing, the toy scorer scores."""
    from scripts import generate

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle on the left and a blue square on the right\n")
    out = tmp_path / "out"
    written = generate.main(["--prompts", str(prompts), "--out", str(out), "--scales", "0", "--steps", "2"])
    assert capsys.readouterr().out.strip().endswith("wrote 1 image, 0 already there (1 of 1 prompts)")
    settings = json.loads((tmp_path / "out" / "settings.json").read_text())
    assert settings["arguments"]["model"] == "asset/toy-sdxl"
    assert settings["arguments"]["device"] == settings["device"] == "cpu"  # recorded as it ran, never null
    results = evaluate.main([str(written[0].parent)])
    assert results["metrics"]["clip_score"].startswith("n/a (--clip-model openai/clip-vit-large-patch14: not in")
    assert 0.0 <= results["rows"][0]["toy_object"] <= 1.0 and "clip_score" not in results["rows"][0]
