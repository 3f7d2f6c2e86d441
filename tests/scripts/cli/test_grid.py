"""The grid writer and what pictures say: labels whose words stay apart, a caption naming the prompt, steps,
guidance method and model under every grid, the random-weights warning, and panel labels that name the method."""

from __future__ import annotations

import argparse

import numpy as np
from PIL import Image

from scripts.cli.captions import guidance_method, random_weights_note, run_caption, scale_label
from scripts.cli.grid import _LABEL_HEIGHT, grid_font, labelled_grid, wrapped_lines


def ink_gaps(strip: np.ndarray) -> list[int]:
    """Widths of the blank column runs between the first and the last inked column of a text strip."""
    inked = (strip < 128).any(axis=(0, 2)) if strip.ndim == 3 else (strip < 128).any(axis=0)
    columns = np.flatnonzero(inked)
    gaps, run = [], 0
    for column in range(columns[0], columns[-1] + 1):
        if inked[column]:
            if run:
                gaps.append(run)
            run = 0
        else:
            run += 1
    return gaps


def label_strip(label: str) -> np.ndarray:
    grid = labelled_grid([Image.new("RGB", (256, 256), "white")], [label])
    return np.asarray(grid.convert("RGB"))[:_LABEL_HEIGHT]


def test_a_space_in_a_label_is_drawn_as_a_gap_wider_than_any_between_letters():
    spaced, joined = ink_gaps(label_strip("PLADIS scale=2")), ink_gaps(label_strip("PLADISscale=2"))
    assert max(spaced) >= 4 and max(spaced) > max(joined)  # the space shows; letters alone never open such a gap


def test_every_grid_can_carry_a_caption_wrapped_to_its_width_and_a_legend():
    image = Image.new("RGB", (64, 64), "gray")
    plain = labelled_grid([image, image], ["a", "b"])
    caption = ["prompt: " + "a long prompt " * 12, "20 steps, CFG 5, seed 0"]
    legend = Image.new("RGB", (300, 20), "red")
    grid = labelled_grid([image, image], ["a", "b"], caption=caption, legend=legend)
    assert grid.width == plain.width == 512 and grid.height > plain.height + 20 + 3 * 18  # ≥ 3 caption lines
    pixels = np.asarray(grid.convert("RGB"))
    assert (pixels[plain.height : plain.height + 30] == (255, 0, 0)).all(axis=-1).any()  # the legend, below
    assert all(grid_font().getlength(line) <= 512 for line in wrapped_lines(caption[0], grid_font(), 504))


def test_guidance_methods_are_named_as_the_pipelines_run_them():
    assert guidance_method(5.0) == "CFG 5"
    assert guidance_method(1.0) == "no CFG (guidance 1)" and guidance_method(0.0) == "no CFG (guidance 0)"
    assert guidance_method(1.0, seg_scale=3.0) == "SEG 3" and guidance_method(5.0, seg_scale=3.0) == "SEG 3 + CFG 5"
    assert guidance_method(5.0, pag_scale=3.0, seg_scale=0.0) == "PAG 3 + CFG 5"
    assert guidance_method(3.5, flux=True) == "FLUX guidance 3.5" and guidance_method(None) == "default guidance"
    assert scale_label("SEG 3", 0.0) == "SEG 3 (no PLADIS)" and scale_label("SEG 3", 2.0) == "SEG 3 + PLADIS scale=2"


def test_the_caption_names_prompt_steps_method_model_and_random_weights():
    args = argparse.Namespace(
        prompt="a red cube", steps=2, timesteps=None, guidance_scale=1.0, seg_scale=3.0, pag_scale=None, seed=4
    )
    args.pladis_alpha, args.pipeline, args.model = 1.5, "sdxl-seg", "asset/tiny-sdxl"
    first, second, note = run_caption(args)
    assert first == 'prompt: "a red cube"'
    assert second == "2 steps, SEG 3, seed 4, PLADIS alpha 1.5, model asset/tiny-sdxl"
    assert note.startswith("Note: asset/tiny-sdxl has random weights") and "noise" in note
    args.model = "asset/toy-sdxl"
    assert len(run_caption(args)) == 2 and random_weights_note("asset/toy-sdxl") is None
    assert random_weights_note("stabilityai/stable-diffusion-xl-base-1.0") is None
