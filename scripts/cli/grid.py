"""The one grid writer: images side by side, each under its label, with an optional legend and a caption
saying what made them, saved as a PNG."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from scripts.cli.records import write_image

FONT_SIZE = 15  # Pillow's built-in font below ~14 px draws its space only 2 px wide: words run together
_LABEL_HEIGHT = 24
_CAPTION_LINE = 20
_MARGIN = 4
_MIN_CELL = 256  # tiny test images are upscaled (nearest) to stay readable next to their labels


def grid_font() -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's built-in scalable font (no font file needed on any machine) at FONT_SIZE."""
    return ImageFont.load_default(size=FONT_SIZE)


def _readable(image: Image.Image) -> Image.Image:
    """`image` enlarged by a whole factor (nearest neighbour) until its short side is at least _MIN_CELL."""
    factor = max(1, -(-_MIN_CELL // min(image.size)))
    return image if factor == 1 else image.resize((image.width * factor, image.height * factor), Image.NEAREST)


def wrapped_lines(text: str, font: ImageFont.ImageFont, width: int) -> list[str]:
    """`text` broken at spaces into lines no wider than `width` pixels (a single longer word stays whole)."""
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength
    lines: list[str] = []
    for paragraph in text.splitlines():
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}" if line else word
            if line and measure(candidate, font=font) > width:
                lines.append(line)
                line = word
            else:
                line = candidate
        lines.append(line)
    return lines


def labelled_grid(
    images: Sequence[Image.Image],
    labels: Sequence[str],
    columns: int | None = None,
    caption: Sequence[str] = (),
    legend: Image.Image | None = None,
) -> Image.Image:
    """Lay `images` out in a grid (one row by default), each with its label in a strip above it; below them
    `legend` (e.g. a colour bar) and the `caption` lines, wrapped to the grid's width."""
    if len(images) != len(labels) or not images:
        raise ValueError(f"need one label per image, got {len(images)} images and {len(labels)} labels")
    images = [_readable(image) for image in images]
    font = grid_font()
    columns = columns or len(images)
    rows = -(-len(images) // columns)
    measure = ImageDraw.Draw(images[0]).textlength
    label_width = max(measure(label, font=font) for label in labels)
    width = max(max(image.width for image in images), int(label_width) + 2 * _MARGIN)
    height = max(image.height for image in images)
    grid_width = max(columns * width, legend.width if legend is not None else 0)
    lines = [line for text in caption for line in wrapped_lines(text, font, grid_width - 2 * _MARGIN)]
    panels_height = rows * (height + _LABEL_HEIGHT)
    legend_height = legend.height + _MARGIN if legend is not None else 0
    caption_height = len(lines) * _CAPTION_LINE + (_MARGIN if lines else 0)
    grid = Image.new("RGB", (grid_width, panels_height + legend_height + caption_height), "white")
    draw = ImageDraw.Draw(grid)
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        x, y = (index % columns) * width, (index // columns) * (height + _LABEL_HEIGHT)
        draw.text((x + _MARGIN, y + 3), label, fill="black", font=font)
        grid.paste(image.convert("RGB"), (x, y + _LABEL_HEIGHT))
    if legend is not None:
        grid.paste(legend.convert("RGB"), (0, panels_height + _MARGIN))
    for number, line in enumerate(lines):
        draw.text((_MARGIN, panels_height + legend_height + _MARGIN + number * _CAPTION_LINE), line, "black", font)
    return grid


def save_grid(
    images: Sequence[Image.Image],
    labels: Sequence[str],
    path: Path,
    columns: int | None = None,
    caption: Sequence[str] = (),
    legend: Image.Image | None = None,
) -> Path:
    """Write `labelled_grid(...)` to `path` (folders created, atomically) and return the path."""
    return write_image(Path(path), labelled_grid(images, labels, columns, caption, legend))
