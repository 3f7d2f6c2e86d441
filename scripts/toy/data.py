"""The toy world of `asset/toy-sdxl`: coloured shapes on the left and right of a dark 32×32 image, with captions.

One module draws the images and writes the captions, so the trainer (`train.py`), the scorer
(`scorer.py`) and their tests agree on the palette, the shapes, the layout and the held-out pairs.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SIZE = 32  # image side in pixels
SUPERSAMPLE = 4  # shapes are drawn 4× larger and downsampled, for smooth edges
BACKGROUND = (16, 16, 24)
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 45, 45),
    "yellow": (235, 215, 45),
    "green": (45, 195, 65),
    "cyan": (45, 205, 220),
    "blue": (50, 80, 235),
    "purple": (170, 65, 215),
}
SHAPES = ("circle", "square", "triangle")
SIDES = ("left", "right")
WORDS = ("a", *COLOURS, *SHAPES, "on", "the", *SIDES, "and")
HELD_OUT_PAIRS = 60  # of the 18 × 18 ordered (left object, right object) pairs, never seen in training
SINGLE_FRACTION = 0.2  # share of training images with one object


@dataclass(frozen=True)
class ToyObject:
    """One object: its colour and shape names."""

    colour: str
    shape: str

    def phrase(self) -> str:
        return f"a {self.colour} {self.shape}"


@dataclass(frozen=True)
class ToyScene:
    """What an image shows: the object on each side (None = that half is empty)."""

    left: ToyObject | None
    right: ToyObject | None

    def caption(self, swap: bool = False) -> str:
        """`"a red circle on the left and a blue square on the right"`; `swap` names the right object first."""
        clauses = [f"{obj.phrase()} on the {side}" for side, obj in (("left", self.left), ("right", self.right)) if obj]
        if swap:
            clauses.reverse()
        return " and ".join(clauses)


ALL_OBJECTS = tuple(ToyObject(colour, shape) for colour in COLOURS for shape in SHAPES)


def all_pairs() -> list[tuple[ToyObject, ToyObject]]:
    """The 324 ordered (left, right) object pairs."""
    return [(left, right) for left in ALL_OBJECTS for right in ALL_OBJECTS]


def held_out_pairs(seed: int = 0) -> set[tuple[ToyObject, ToyObject]]:
    """The (left, right) pairs kept out of training: a fixed random choice of HELD_OUT_PAIRS pairs."""
    pairs = all_pairs()
    return set(random.Random(seed).sample(pairs, HELD_OUT_PAIRS))


def all_captions() -> list[str]:
    """Every caption the toy world can write (both clause orders), in a fixed order: the text-embedding table."""
    captions = []
    for left, right in all_pairs():
        scene = ToyScene(left, right)
        captions += [scene.caption(), scene.caption(swap=True)]
    for obj in ALL_OBJECTS:
        captions += [ToyScene(obj, None).caption(), ToyScene(None, obj).caption()]
    return captions


def draw_scene(scene: ToyScene, rng: random.Random) -> Image.Image:
    """Draw `scene` as a 32×32 RGB image: each object centred in its half with jittered position and size."""
    big = SIZE * SUPERSAMPLE
    image = Image.new("RGB", (big, big), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for centre_x, obj in ((SIZE * 0.25, scene.left), (SIZE * 0.75, scene.right)):
        if obj is None:
            continue
        radius = rng.uniform(4.5, 6.5)
        cx = (centre_x + rng.uniform(-1.5, 1.5)) * SUPERSAMPLE
        cy = (SIZE / 2 + rng.uniform(-4.0, 4.0)) * SUPERSAMPLE
        r = radius * SUPERSAMPLE
        colour = COLOURS[obj.colour]
        if obj.shape == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
        elif obj.shape == "square":
            side = r * 0.9  # the same area order as the circle's
            draw.rectangle((cx - side, cy - side, cx + side, cy + side), fill=colour)
        else:  # an upward triangle, apex at the top
            draw.polygon(((cx, cy - r), (cx + r, cy + r * 0.85), (cx - r, cy + r * 0.85)), fill=colour)
    return image.resize((SIZE, SIZE), Image.BOX)


def random_scene(rng: random.Random, exclude: set[tuple[ToyObject, ToyObject]]) -> ToyScene:
    """A training scene: one object (SINGLE_FRACTION of the time) or a (left, right) pair not in `exclude`."""
    if rng.random() < SINGLE_FRACTION:
        obj = rng.choice(ALL_OBJECTS)
        return ToyScene(obj, None) if rng.random() < 0.5 else ToyScene(None, obj)
    while True:
        left, right = rng.choice(ALL_OBJECTS), rng.choice(ALL_OBJECTS)
        if (left, right) not in exclude:
            return ToyScene(left, right)


def training_samples(count: int, seed: int) -> Iterator[tuple[np.ndarray, str]]:
    """`count` (uint8 HWC image, caption) training pairs, held-out pairs excluded, clause order random."""
    rng = random.Random(seed)
    exclude = held_out_pairs()
    for _ in range(count):
        scene = random_scene(rng, exclude)
        yield np.asarray(draw_scene(scene, rng)), scene.caption(swap=rng.random() < 0.5)


def evaluation_scenes(count: int, seed: int = 1234, held_out_share: float = 0.5) -> list[tuple[ToyScene, bool, bool]]:
    """`count` two-object scenes for scoring, `(scene, held_out, swapped)`: `held_out_share` from the held-out pairs.

    Pairs are drawn without replacement within each group, cycling when `count` needs more.
    """
    rng = random.Random(seed)
    held = sorted(held_out_pairs(), key=lambda pair: (pair[0].colour, pair[0].shape, pair[1].colour, pair[1].shape))
    seen = [pair for pair in all_pairs() if pair not in set(held)]
    rng.shuffle(held)
    rng.shuffle(seen)
    n_held = round(count * held_out_share)
    chosen = [(held[i % len(held)], True) for i in range(n_held)] + [
        (seen[i % len(seen)], False) for i in range(count - n_held)
    ]
    return [(ToyScene(*pair), is_held, rng.random() < 0.5) for pair, is_held in chosen]


def to_array(images: Sequence[Image.Image]) -> np.ndarray:
    """PIL images → one uint8 (N, H, W, 3) array."""
    return np.stack([np.asarray(image.convert("RGB")) for image in images])
