"""The one grid writer: images side by side, each under its label, saved as a PNG."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from scripts.cli.records import write_image

_LABEL_HEIGHT = 24
_MIN_CELL = 256  # tiny test images are upscaled (nearest) to stay readable next to their labels


def _readable(image: Image.Image) -> Image.Image:
    """`image` enlarged by a whole factor (nearest neighbour) until its short side is at least _MIN_CELL."""
    factor = max(1, -(-_MIN_CELL // min(image.size)))
    return image if factor == 1 else image.resize((image.width * factor, image.height * factor), Image.NEAREST)


def labelled_grid(images: Sequence[Image.Image], labels: Sequence[str], columns: int | None = None) -> Image.Image:
    """Lay `images` out in a grid (one row by default), each with its label in a strip above it."""
    if len(images) != len(labels) or not images:
        raise ValueError(f"need one label per image, got {len(images)} images and {len(labels)} labels")
    images = [_readable(image) for image in images]
    font = ImageFont.load_default()
    columns = columns or len(images)
    rows = -(-len(images) // columns)
    label_width = max(ImageDraw.Draw(images[0]).textlength(label, font=font) for label in labels)
    width = max(max(image.width for image in images), int(label_width) + 8)
    height = max(image.height for image in images)
    grid = Image.new("RGB", (columns * width, rows * (height + _LABEL_HEIGHT)), "white")
    draw = ImageDraw.Draw(grid)
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        x, y = (index % columns) * width, (index // columns) * (height + _LABEL_HEIGHT)
        draw.text((x + 4, y + 4), label, fill="black", font=font)
        grid.paste(image.convert("RGB"), (x, y + _LABEL_HEIGHT))
    return grid


def save_grid(images: Sequence[Image.Image], labels: Sequence[str], path: Path, columns: int | None = None) -> Path:
    """Write `labelled_grid(images, labels)` to `path` (folders created, atomically) and return the path."""
    return write_image(Path(path), labelled_grid(images, labels, columns))
