"""The latent space of the toy world's autoencoder: what is where, at 1/8 of the image size.

Each latent cell (8x8 px) holds four numbers, zero on the background: a colour code (channels 0-1: the colour's
angle on the hue wheel red, orange, yellow, green, blue, purple) and a shape code (channels 2-3: one corner of a
square per shape), both scaled by ``AMPLITUDE`` and by the share of the cell the object covers. The decoder is
trained to draw the scene from this code and the encoder to read it back, so the diffusion model works in a small,
smooth space where colours and shapes are directions and an object's extent is its footprint.

Shapes: ``latent [4, h, w]`` float32, ``h = w = image size / LATENT_FACTOR``.
"""
from __future__ import annotations

import math

import numpy as np

from .world import COLOURS, IMAGE_SIZE, SHAPES, Scene, object_mask

LATENT_FACTOR = 8
LATENT_CHANNELS = 4
AMPLITUDE = 3.0  # latent std about 0.6 over the world (background 0), so the layout forms in the early steps

COLOUR_CODES: dict[str, tuple[float, float]] = {
    name: (AMPLITUDE * math.cos(math.radians(60 * index)), AMPLITUDE * math.sin(math.radians(60 * index)))
    for index, name in enumerate(COLOURS)
}
SHAPE_CODES: dict[str, tuple[float, float]] = {
    name: (AMPLITUDE * math.cos(math.radians(45 + 90 * index)), AMPLITUDE * math.sin(math.radians(45 + 90 * index)))
    for index, name in enumerate(SHAPES)
}


def coverage(mask: np.ndarray, factor: int = LATENT_FACTOR) -> np.ndarray:
    """Share of each ``factor x factor`` cell that ``mask [H, W]`` covers: ``[H / factor, W / factor]``."""
    height, width = mask.shape
    return mask.reshape(height // factor, factor, width // factor, factor).mean(axis=(1, 3), dtype=np.float32)


def scene_latent(scene: Scene, image_size: int = IMAGE_SIZE) -> np.ndarray:
    """The latent of ``scene``: ``[4, image_size / 8, image_size / 8]`` float32."""
    side = image_size // LATENT_FACTOR
    latent = np.zeros((LATENT_CHANNELS, side, side), dtype=np.float32)
    for obj in scene.objects:
        share = coverage(object_mask(obj, image_size))
        colour, shape = COLOUR_CODES[obj.colour], SHAPE_CODES[obj.shape]
        for channel, value in enumerate((*colour, *shape)):
            latent[channel] += share * value
    return latent
