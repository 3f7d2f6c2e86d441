"""Control-image preprocessors: DPT depth maps loaded with `from_pretrained` from a saved tiny random DPT,
Canny edges through controlnet_aux, both at the input's size; and the saved tiny DPT asset."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from scripts.cli.assets import TINY_CONTROL_IMAGE, TINY_DPT
from scripts.cli.preprocess import PREPROCESSORS, canny_map, depth_map
from scripts.dev.build_tiny_assets import build_tiny_dpt, tiny_control_image


@pytest.fixture(scope="module")
def saved_dpt(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dpt")
    model, processor = build_tiny_dpt(seed=3)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder, model, processor


def test_depth_map_is_the_normalised_dpt_prediction_at_the_image_size(saved_dpt):
    folder, model, processor = saved_dpt
    image = tiny_control_image().resize((80, 48))
    depth = depth_map(image, model=str(folder))
    assert depth.size == (80, 48) and depth.mode == "RGB"
    pixels = np.asarray(depth).astype(int)
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 0] == pixels[..., 2]).all()
    assert pixels.min() == 0 and pixels.max() == 255
    with torch.no_grad():
        predicted = model(**processor(images=image, return_tensors="pt")).predicted_depth
    resized = torch.nn.functional.interpolate(predicted[:, None], size=(48, 80), mode="bicubic")[0, 0].numpy()
    expected = 255 * (resized - resized.min()) / (resized.max() - resized.min())
    assert np.abs(pixels[..., 0] - expected).max() <= 1.0


def test_depth_map_takes_an_output_size(saved_dpt):
    assert depth_map(tiny_control_image(), model=str(saved_dpt[0]), size=(32, 40)).size == (32, 40)


def test_canny_map_is_opencv_canny_at_the_image_size():
    import cv2

    image = tiny_control_image()
    edges = np.asarray(canny_map(image, 100, 200))
    assert edges.shape == (64, 64, 3)
    np.testing.assert_array_equal(edges[..., 0], cv2.Canny(np.asarray(image), 100, 200))
    assert 0 < (edges[..., 0] > 0).mean() < 0.5  # the disc's and the box's outlines, not the whole picture
    assert canny_map(image.resize((80, 48))).size == (80, 48)
    assert np.asarray(canny_map(Image.new("RGB", (64, 64), (90, 90, 90)))).max() == 0  # no edges in a flat image


def test_preprocessors_by_name():
    assert PREPROCESSORS == {"canny": canny_map, "depth": depth_map}


def test_saved_tiny_dpt_and_control_image_are_what_the_builder_makes():
    from transformers import DPTForDepthEstimation

    saved = DPTForDepthEstimation.from_pretrained(TINY_DPT).state_dict()
    fresh = build_tiny_dpt()[0].state_dict()
    assert saved.keys() == fresh.keys() and all(torch.equal(saved[k], fresh[k]) for k in saved)
    np.testing.assert_array_equal(np.asarray(Image.open(TINY_CONTROL_IMAGE)), np.asarray(tiny_control_image()))
