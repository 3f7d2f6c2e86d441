"""A deterministic scorer for `asset/toy-sdxl` images: the colour and shape of the object in each image half.

No learned weights: foreground pixels are those far from the background colour, the colour is the palette
colour nearest to their mean, the shape comes from where the object's mass sits in its bounding box
(triangles point up) and how much of the box and of its corners it fills. `tests/scripts/toy/test_toy_scorer.py`
checks it on drawn images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from scripts.toy.data import BACKGROUND, COLOURS, SIDES, ToyObject, ToyScene

FOREGROUND_DISTANCE = 70.0  # RGB distance from the background above which a pixel belongs to an object
CORE_DISTANCE = 120.0  # pixels this far from the background set the colour (anti-aliased edges blend)
TRIANGLE_CENTROID = 0.56  # relative height of the mass centre (0.5 symmetric, 0.67 an upward triangle)
SQUARENESS = 1.38  # box fill + corner fill above which a symmetric object is a square (disc ≈ 0.8 + 0.3, square ≈ 2)
MIN_PIXELS = 8  # fewer foreground pixels than this in a half: the half is empty
_PALETTE_NAMES = tuple(COLOURS)
_PALETTE = np.array([COLOURS[name] for name in _PALETTE_NAMES], dtype=np.float64)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a boolean mask (stray pixels do not shape the object)."""
    labels = np.zeros(mask.shape, dtype=np.int32)
    best, best_size, current = 0, 0, 0
    for start in zip(*np.nonzero(mask), strict=True):
        if labels[start]:
            continue
        current += 1
        stack, size = [start], 0
        labels[start] = current
        while stack:
            y, x = stack.pop()
            size += 1
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = current
                    stack.append((ny, nx))
        if size > best_size:
            best, best_size = current, size
    return labels == best if best else mask


def shape_of(mask: np.ndarray) -> str:
    """ "circle", "square" or "triangle" from a foreground mask: where its mass sits, then how square it is.

    An upward triangle's centroid lies 2/3 of the way down its bounding box, a circle's and a square's
    halfway. A square fills its bounding box and its corners; a disc fills π/4 of the box and about a
    third of its corner cells (the outer quarter of each side). Their sum separates the two even when
    the VAE rounds the square's corners.
    """
    rows = np.nonzero(mask.any(axis=1))[0]
    cols = np.nonzero(mask.any(axis=0))[0]
    box = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].astype(np.float64)
    height, width = box.shape
    centroid = (np.nonzero(box)[0].mean() + 0.5) / height
    if centroid > TRIANGLE_CENTROID:
        return "triangle"
    cell_h, cell_w = max(1, round(height / 4)), max(1, round(width / 4))
    corners = np.mean(
        [
            box[:cell_h, :cell_w].mean(),
            box[:cell_h, -cell_w:].mean(),
            box[-cell_h:, :cell_w].mean(),
            box[-cell_h:, -cell_w:].mean(),
        ]
    )
    return "square" if box.mean() + corners > SQUARENESS else "circle"


def classify_half(pixels: np.ndarray) -> ToyObject | None:
    """The object in one image half (uint8 H×W×3), or None when the half is empty."""
    pixels = np.asarray(pixels, dtype=np.float64)
    distance = np.linalg.norm(pixels - np.array(BACKGROUND, dtype=np.float64), axis=-1)
    mask = distance > FOREGROUND_DISTANCE
    if mask.sum() < MIN_PIXELS:
        return None
    mask = _largest_component(mask)
    if mask.sum() < MIN_PIXELS:
        return None
    core = mask & (distance > CORE_DISTANCE)
    mean = pixels[core if core.sum() >= 4 else mask].mean(axis=0)
    colour = _PALETTE_NAMES[int(np.argmin(np.linalg.norm(_PALETTE - mean, axis=-1)))]
    return ToyObject(colour, shape_of(mask))


def read_scene(image: Image.Image | np.ndarray) -> ToyScene:
    """What an image shows, half by half."""
    pixels = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    middle = pixels.shape[1] // 2
    return ToyScene(classify_half(pixels[:, :middle]), classify_half(pixels[:, middle:]))


@dataclass(frozen=True)
class SceneScore:
    """How well an image matches the scene its prompt asked for (two-object scenes: per object and both)."""

    colour: float  # share of the two objects with the right colour on the right side
    shape: float  # share with the right shape on the right side
    object: float  # share with both right
    image: float  # 1 when all four attributes are right, else 0


def score_scene(wanted: ToyScene, seen: ToyScene) -> SceneScore:
    """Compare side by side: an attribute counts only when it is on the side the prompt named."""
    colours = shapes = objects = 0
    for side in SIDES:
        want, got = getattr(wanted, side), getattr(seen, side)
        if want is None:
            raise ValueError("score_scene scores two-object scenes; the prompt leaves a side empty")
        colours += got is not None and got.colour == want.colour
        shapes += got is not None and got.shape == want.shape
        objects += got == want
    return SceneScore(colours / 2, shapes / 2, objects / 2, float(objects == 2))


def scene_of_caption(caption: str) -> ToyScene:
    """Parse a toy caption ("a red circle on the left and a blue square on the right", either order)."""
    sides: dict[str, ToyObject] = {}
    for clause in caption.strip().split(" and "):
        words = clause.split()
        if len(words) != 6 or words[0] != "a" or words[3:5] != ["on", "the"] or words[5] not in SIDES:
            raise ValueError(f"not a toy caption clause: {clause!r} (expected 'a <colour> <shape> on the left|right')")
        if words[1] not in COLOURS:
            raise ValueError(f"unknown colour {words[1]!r} in {caption!r}; accepted: {', '.join(COLOURS)}")
        sides[words[5]] = ToyObject(words[1], words[2])
    return ToyScene(sides.get("left"), sides.get("right"))
