"""Scenes of one to three flat coloured shapes on a grey background, drawn deterministically from a seed.

Images are ``IMAGE_SIZE`` px square, RGB ``uint8 [H, W, 3]``. Shapes are axis-aligned: a circle, a square, an
upright triangle (base and height equal to the size) and a cross (a plus sign whose arms are a third of its size
wide). Each shape's size is its bounding box side. Shapes never touch: every two are at least ``GAP`` px apart
(Chebyshev distance), so no 8x8 latent cell holds two of them; their bounding boxes may overlap (a triangle's empty
corner over a circle's, say). Captions list the objects in random order in the pack's prompt style: "a red circle",
"a red circle and a blue square", "a red circle, a blue square and a green cross" ("an orange ..." before a vowel).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

IMAGE_SIZE = 192
BACKGROUND = (128, 128, 128)
# Hue order (red, orange, yellow, green, blue, purple): the latent codes colours as angles around this wheel.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 130, 20),
    "yellow": (240, 220, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "purple": (150, 50, 190),
}
SHAPES = ("circle", "square", "triangle", "cross")
MIN_SIZE, MAX_SIZE = 40, 72
GAP = 8
MARGIN = 4
COUNT_WEIGHTS = (0.6, 0.3, 0.1)  # default chances of 1, 2 and 3 objects
_MAX_PLACEMENT_TRIES = 200


@dataclass(frozen=True)
class WorldObject:
    """One shape: its colour and shape names and its bounding box (left, top, size) in px."""

    colour: str
    shape: str
    left: int
    top: int
    size: int

    @property
    def phrase(self) -> str:
        return f"{self.colour} {self.shape}"

    @property
    def centre(self) -> tuple[float, float]:
        return self.left + self.size / 2, self.top + self.size / 2


@dataclass(frozen=True)
class Scene:
    """Objects in caption order."""

    objects: tuple[WorldObject, ...]

    @property
    def caption(self) -> str:
        return caption([obj.phrase for obj in self.objects])


def caption(phrases: Sequence[str]) -> str:
    """ "a red circle", "a red circle and an orange square", "a red circle, a blue square and a green cross"."""
    items = [f"{'an' if phrase[:1] in 'aeiou' else 'a'} {phrase}" for phrase in phrases]
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def shape_mask(shape: str, size: int) -> np.ndarray:
    """``[size, size]`` bool: the shape filling a ``size`` px bounding box (pixel centres tested)."""
    centre = np.arange(size) + 0.5
    x, y = centre[None, :], centre[:, None]
    half = size / 2
    if shape == "circle":
        return (x - half) ** 2 + (y - half) ** 2 <= half ** 2
    if shape == "square":
        return np.ones((size, size), dtype=bool)
    if shape == "triangle":
        return np.abs(x - half) <= y / 2  # apex at the top centre, base along the bottom edge
    if shape == "cross":
        arm = size / 6  # half the arm width: arms a third of the size wide
        return (np.abs(x - half) <= arm) | (np.abs(y - half) <= arm)
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def object_mask(obj: WorldObject, image_size: int = IMAGE_SIZE) -> np.ndarray:
    """``[image_size, image_size]`` bool: where the object is drawn."""
    mask = np.zeros((image_size, image_size), dtype=bool)
    mask[obj.top:obj.top + obj.size, obj.left:obj.left + obj.size] = shape_mask(obj.shape, obj.size)
    return mask


def render(scene: Scene, image_size: int = IMAGE_SIZE) -> np.ndarray:
    """The scene as ``uint8 [H, W, 3]``."""
    image = np.empty((image_size, image_size, 3), dtype=np.uint8)
    image[:] = BACKGROUND
    for obj in scene.objects:
        image[object_mask(obj, image_size)] = COLOURS[obj.colour]
    return image


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation by a ``(2·radius + 1)`` square (Chebyshev distance ``radius``)."""
    padded = np.pad(mask, radius)
    window = 2 * radius + 1
    rows = np.lib.stride_tricks.sliding_window_view(padded, window, axis=0).max(axis=-1)
    return np.lib.stride_tricks.sliding_window_view(rows, window, axis=1).max(axis=-1)


def place(rng: np.random.Generator, phrases: Sequence[tuple[str, str]],
          image_size: int = IMAGE_SIZE) -> tuple[WorldObject, ...] | None:
    """Random sizes and positions for ``(colour, shape)`` pairs, shapes at least ``GAP`` px apart; None when the
    random draws found no room (the caller draws again)."""
    taken = np.zeros((image_size + 2 * GAP, image_size + 2 * GAP), dtype=bool)  # padded by GAP on every side
    placed = []
    for colour, shape in phrases:
        for _ in range(_MAX_PLACEMENT_TRIES):
            size = int(rng.integers(MIN_SIZE, MAX_SIZE + 1))
            left = int(rng.integers(MARGIN, image_size - MARGIN - size + 1))
            top = int(rng.integers(MARGIN, image_size - MARGIN - size + 1))
            mask = shape_mask(shape, size)
            region = (slice(top + GAP, top + GAP + size), slice(left + GAP, left + GAP + size))
            if not (mask & taken[region]).any():
                taken[top:top + size + 2 * GAP, left:left + size + 2 * GAP] |= dilate(np.pad(mask, GAP), GAP)
                placed.append(WorldObject(colour, shape, left, top, size))
                break
        else:
            return None
    return tuple(placed)


def sample_phrases(rng: np.random.Generator, count: int) -> list[tuple[str, str]]:
    """``count`` distinct ``(colour, shape)`` pairs, uniformly at random (colours or shapes may repeat)."""
    pairs = [(colour, shape) for colour in COLOURS for shape in SHAPES]
    chosen = rng.choice(len(pairs), size=count, replace=False)
    return [pairs[int(index)] for index in chosen]


def sample_scene(rng: np.random.Generator, count_weights: Sequence[float] = COUNT_WEIGHTS,
                 image_size: int = IMAGE_SIZE) -> Scene:
    """A random scene: 1, 2 or 3 objects with the given chances, random phrases, sizes, positions and caption
    order."""
    weights = np.asarray(count_weights, dtype=float)
    count = int(rng.choice(len(weights), p=weights / weights.sum())) + 1
    while True:
        placed = place(rng, sample_phrases(rng, count), image_size)
        if placed is not None:
            return Scene(placed)


def scene_for(rng: np.random.Generator, phrases: Sequence[tuple[str, str]], image_size: int = IMAGE_SIZE) -> Scene:
    """A scene with exactly these ``(colour, shape)`` objects, in this caption order, at random places."""
    while True:
        placed = place(rng, phrases, image_size)
        if placed is not None:
            return Scene(placed)


def scenes(seed: int, count: int, count_weights: Sequence[float] = COUNT_WEIGHTS,
           image_size: int = IMAGE_SIZE) -> list[Scene]:
    """``count`` scenes, the same for the same ``seed``."""
    rng = np.random.default_rng(seed)
    return [sample_scene(rng, count_weights, image_size) for _ in range(count)]
