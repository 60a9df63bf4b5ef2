"""Reads a toy-world image back: which coloured shapes it shows, and where.

1. Colour segmentation: every pixel takes the nearest palette colour or the background, and only when that colour
   is clearly nearer than the runner-up (pixels half way between a shape and the background, on the soft edges of a
   decoded image, stay unassigned); each colour's mask is opened (eroded then dilated by 1 px) to drop thin rims.
2. Connected components of each colour; components under ``MIN_AREA`` px are specks and ignored.
3. Shape from geometry: the component's mask, cropped to its bounding box and resized to a square, is compared with
   each shape's template; the best intersection-over-union names the shape (``None`` below ``MIN_IOU`` or for a
   box longer than ``MAX_ASPECT`` times its width: a blob that is no shape of the world).

Input images: ``uint8 [H, W, 3]`` or float ``[H, W, 3]`` in ``[0, 1]``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from .world import BACKGROUND, COLOURS, SHAPES, dilate, shape_mask

MIN_AREA = 200  # px at 192 px image size: a quarter of the smallest shape the world draws
MIN_IOU = 0.5
MAX_ASPECT = 1.5  # every shape of the world fills a square box; a longer blob is none of them
NEAREST_RATIO = 0.75  # a pixel takes a colour only when it is this much nearer than the runner-up
_TEMPLATE_SIZE = 32
_TEMPLATES = {shape: shape_mask(shape, _TEMPLATE_SIZE) for shape in SHAPES}
_PALETTE = np.array([BACKGROUND, *COLOURS.values()], dtype=np.float32)  # index 0: background
_NAMES = list(COLOURS)


@dataclass(frozen=True)
class Detection:
    """One object found: colour name, shape name (None: no shape of the world), bounding box in px, area in px,
    and the template IoU of the chosen shape."""

    colour: str
    shape: str | None
    left: int
    top: int
    width: int
    height: int
    area: int
    iou: float

    @property
    def centre(self) -> tuple[float, float]:
        return self.left + self.width / 2, self.top + self.height / 2


def as_uint8(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        return image
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def colour_labels(image: np.ndarray) -> np.ndarray:
    """``[H, W]`` int: -1 background or unassigned, else the index of the colour in ``COLOURS``."""
    pixels = as_uint8(image).astype(np.float32)
    distances = np.linalg.norm(pixels[:, :, None, :] - _PALETTE[None, None], axis=-1)  # [H, W, 1 + colours]
    order = np.argsort(distances, axis=-1)
    nearest, runner_up = order[..., 0], order[..., 1]
    nearest_distance = np.take_along_axis(distances, nearest[..., None], -1)[..., 0]
    runner_up_distance = np.take_along_axis(distances, runner_up[..., None], -1)[..., 0]
    clear = nearest_distance <= NEAREST_RATIO * runner_up_distance
    return np.where(clear & (nearest > 0), nearest - 1, -1)


def opened(mask: np.ndarray, radius: int = 1) -> np.ndarray:
    eroded = ~dilate(~mask, radius)
    return dilate(eroded, radius) & mask


def components(mask: np.ndarray) -> list[np.ndarray]:
    """4-connected components of ``mask [H, W]`` as index arrays into the flattened mask.

    Each pixel starts with its own index as label and repeatedly takes the smallest label among itself and its
    neighbours, with pointer jumping (a label is a pixel index, so a label's own label is a smaller one of the
    same component), until nothing changes.
    """
    height, width = mask.shape
    flat_mask = mask.ravel()
    big = height * width
    labels = np.where(flat_mask, np.arange(big), big).reshape(height, width)
    while True:
        smallest = labels.copy()
        np.minimum(smallest[:, 1:], labels[:, :-1], out=smallest[:, 1:])
        np.minimum(smallest[:, :-1], labels[:, 1:], out=smallest[:, :-1])
        np.minimum(smallest[1:, :], labels[:-1, :], out=smallest[1:, :])
        np.minimum(smallest[:-1, :], labels[1:, :], out=smallest[:-1, :])
        smallest = np.where(mask, smallest, big)
        flat = smallest.ravel()
        inside = flat < big
        flat[inside] = flat[flat[inside]]  # pointer jumping
        if np.array_equal(smallest, labels):
            break
        labels = smallest
    flat = labels.ravel()
    found = np.unique(flat[flat < big])
    order = np.argsort(flat, kind="stable")
    sorted_labels = flat[order]
    return [order[np.searchsorted(sorted_labels, label, "left"):np.searchsorted(sorted_labels, label, "right")]
            for label in found]


def classify_shape(mask: np.ndarray) -> tuple[str | None, float]:
    """The shape whose template best matches ``mask`` (cropped to its bounding box), and that IoU."""
    resized = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(
        (_TEMPLATE_SIZE, _TEMPLATE_SIZE), Image.Resampling.BOX)) >= 128
    scores = {shape: float((resized & template).sum() / max((resized | template).sum(), 1))
              for shape, template in _TEMPLATES.items()}
    best = max(scores, key=scores.get)
    return (best if scores[best] >= MIN_IOU else None), scores[best]


def detect(image: np.ndarray) -> list[Detection]:
    """Every object in ``image``, largest first."""
    labels = colour_labels(image)
    height, width = labels.shape
    found = []
    for index, colour in enumerate(_NAMES):
        mask = opened(labels == index)
        for pixels in components(mask):
            if pixels.size < MIN_AREA:
                continue
            rows, cols = np.divmod(pixels, width)
            top, left = int(rows.min()), int(cols.min())
            box_height, box_width = int(rows.max()) - top + 1, int(cols.max()) - left + 1
            crop = np.zeros((box_height, box_width), dtype=bool)
            crop[rows - top, cols - left] = True
            shape, iou = classify_shape(crop)
            if max(box_width, box_height) > MAX_ASPECT * min(box_width, box_height):
                shape = None
            found.append(Detection(colour, shape, left, top, box_width, box_height, int(pixels.size), iou))
    return sorted(found, key=lambda detection: -detection.area)
