"""Text on attention grids: row labels on the left, column labels on top (Pillow, which ComfyUI itself requires)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

PADDING = 6


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow before 10.1 has only its fixed-size bitmap font
        return ImageFont.load_default()


def _width(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont) -> int:
    left, _, right, _ = draw.textbbox((0, 0), text, font=font)
    return right - left


def _fitted(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont, room: int) -> str:
    """``text``, cut to end in "..." where it is wider than ``room`` px."""
    if _width(draw, text, font) <= room:
        return text
    while text and _width(draw, text + "...", font) > room:
        text = text[:-1]
    return text + "..."


def label_grid(grid: torch.Tensor, tile_height: int, tile_width: int, gap: int, row_labels: Sequence[str],
               column_labels: Sequence[str], margin_for: Sequence[str] = ()) -> torch.Tensor:
    """A grid ``[H, W, 3]`` (from ``viz.grid``) with a label left of each row and one above each column.

    Column labels may hold several lines (``"step 3\\n(guided)"``). Labels too long for their room end in "...".
    The left margin fits the widest of ``row_labels`` and ``margin_for`` (so that pictures with different row
    labels come out the same size). Returns ``[H + header, W + margin, 3]`` in 0..1.
    """
    font_size = max(12, min(32, tile_width // 10))
    font = _font(font_size)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_height = font_size + 4
    margin = 0
    if any(row_labels):
        widest = max(_width(measure, label, font) for label in (*row_labels, *margin_for))
        margin = min(widest, 3 * tile_width) + 2 * PADDING
    lines = max((label.count("\n") + 1 for label in column_labels), default=0)
    header = lines * line_height + 2 * PADDING if any(column_labels) else 0

    body = Image.fromarray((grid.clamp(0, 1) * 255).round().byte().cpu().numpy())
    canvas = Image.new("RGB", (body.width + margin, body.height + header), "white")
    canvas.paste(body, (margin, header))
    draw = ImageDraw.Draw(canvas)
    for row, label in enumerate(row_labels):
        text = _fitted(draw, label, font, margin - 2 * PADDING)
        top = header + row * (tile_height + gap) + (tile_height - line_height) // 2
        draw.text((PADDING, top), text, fill="black", font=font)
    for column, label in enumerate(column_labels):
        left = margin + column * (tile_width + gap)
        for number, line in enumerate(label.split("\n")):
            text = _fitted(draw, line, font, tile_width)
            centred = left + (tile_width - _width(draw, text, font)) // 2
            draw.text((centred, PADDING + number * line_height), text, fill="black", font=font)
    return torch.from_numpy(np.asarray(canvas).astype(np.float32) / 255.0)
