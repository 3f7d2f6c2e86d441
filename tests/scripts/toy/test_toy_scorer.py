"""The toy scorer reads drawn toy images correctly, and scores prompts against what it reads."""

from __future__ import annotations

import random

import pytest

from scripts.toy.data import ALL_OBJECTS, SIDES, ToyObject, ToyScene, all_captions, draw_scene, random_scene
from scripts.toy.scorer import read_scene, scene_of_caption, score_scene


def test_reads_at_least_97_percent_of_drawn_objects_and_empty_halves() -> None:
    rng = random.Random(2024)
    right = total = 0
    for index in range(600):
        # a third two-object scenes of any pair, the rest training-like scenes (20 % single objects)
        scene = (
            ToyScene(rng.choice(ALL_OBJECTS), rng.choice(ALL_OBJECTS)) if index % 3 == 0 else random_scene(rng, set())
        )
        seen = read_scene(draw_scene(scene, rng))
        for side in SIDES:
            right += getattr(seen, side) == getattr(scene, side)
            total += 1
    assert right / total >= 0.97


def test_every_colour_and_shape_is_read_on_both_sides() -> None:
    rng = random.Random(0)
    for obj in ALL_OBJECTS:
        other = ToyObject("green" if obj.colour != "green" else "red", "square" if obj.shape != "square" else "circle")
        assert read_scene(draw_scene(ToyScene(obj, other), rng)) == ToyScene(obj, other)
        assert read_scene(draw_scene(ToyScene(other, obj), rng)) == ToyScene(other, obj)


def test_captions_parse_back_to_their_scene_in_either_clause_order() -> None:
    scene = ToyScene(ToyObject("red", "circle"), ToyObject("blue", "square"))
    assert scene_of_caption(scene.caption()) == scene
    assert scene_of_caption(scene.caption(swap=True)) == scene
    assert all(scene_of_caption(caption).caption() in all_captions() for caption in all_captions())


def test_score_counts_attributes_only_on_the_named_side() -> None:
    wanted = ToyScene(ToyObject("red", "circle"), ToyObject("blue", "square"))
    swapped = ToyScene(ToyObject("blue", "square"), ToyObject("red", "circle"))  # a binding error
    assert score_scene(wanted, wanted) == score_scene(wanted, wanted).__class__(1.0, 1.0, 1.0, 1.0)
    assert score_scene(wanted, swapped).image == 0.0 and score_scene(wanted, swapped).colour == 0.0
    half = score_scene(wanted, ToyScene(ToyObject("red", "triangle"), None))
    assert (half.colour, half.shape, half.object, half.image) == (0.5, 0.0, 0.0, 0.0)


@pytest.mark.parametrize("caption", ["a red circle", "a pink circle on the left", "two red circles on the left"])
def test_non_toy_captions_are_refused(caption: str) -> None:
    with pytest.raises(ValueError):
        scene_of_caption(caption)


@pytest.mark.slow
def test_reads_at_least_97_percent_of_objects_after_the_toy_vae_round_trip() -> None:
    """The scorer reads generated images, which pass through the VAE decoder: its blur must not fool it."""
    import torch
    from diffusers import AutoencoderKL

    from scripts.cli.assets import REPO_ROOT, TOY_MODEL
    from scripts.toy.data import to_array

    vae = AutoencoderKL.from_pretrained(str(REPO_ROOT / TOY_MODEL / "vae"), dtype=torch.float32)
    rng = random.Random(7)
    scenes = [ToyScene(rng.choice(ALL_OBJECTS), rng.choice(ALL_OBJECTS)) for _ in range(200)]
    pixels = torch.from_numpy(to_array([draw_scene(scene, rng) for scene in scenes])).permute(0, 3, 1, 2)
    with torch.no_grad():
        decoded = vae.decode(vae.encode(pixels.float() / 127.5 - 1).latent_dist.mean).sample
    images = ((decoded.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    right = sum(
        getattr(read_scene(image), side) == getattr(scene, side)
        for scene, image in zip(scenes, images, strict=True)
        for side in SIDES
    )
    assert right / (2 * len(scenes)) >= 0.97
