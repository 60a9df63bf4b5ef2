"""Attention maps as pictures: normalisation, a colour map and grids (pure PyTorch; images ``[..., H, W, 3]`` in 0..1)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

# Matplotlib's "viridis" (public domain, CC0) sampled at 11 evenly spaced points; linear interpolation between them
# stays within a few percent of the full 256-entry table.
VIRIDIS_ANCHORS = torch.tensor([
    [0.267004, 0.004874, 0.329415], [0.282327, 0.140926, 0.457517], [0.253935, 0.265254, 0.529983],
    [0.206756, 0.371758, 0.553117], [0.163625, 0.471133, 0.558148], [0.127568, 0.566949, 0.550556],
    [0.134692, 0.658636, 0.517649], [0.266941, 0.748751, 0.440573], [0.477504, 0.821444, 0.318195],
    [0.741388, 0.873449, 0.149561], [0.993248, 0.906157, 0.143936],
])


def normalize(maps: torch.Tensor) -> torch.Tensor:
    """Scale each ``[h, w]`` map of ``[..., h, w]`` to 0..1 by its own minimum and maximum."""
    low = maps.amin(dim=(-2, -1), keepdim=True)
    high = maps.amax(dim=(-2, -1), keepdim=True)
    return (maps - low) / (high - low).clamp_min(1e-12)


def colorize(maps: torch.Tensor) -> torch.Tensor:
    """Values in 0..1, ``[..., h, w]`` -> viridis colours ``[..., h, w, 3]``."""
    scaled = maps.clamp(0, 1) * (len(VIRIDIS_ANCHORS) - 1)
    lower = scaled.floor().long().clamp(max=len(VIRIDIS_ANCHORS) - 2)
    weight = (scaled - lower)[..., None]
    anchors = VIRIDIS_ANCHORS.to(maps.device)
    return anchors[lower] * (1 - weight) + anchors[lower + 1] * weight


def upscale(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Nearest-neighbour resize so every attention pixel stays a visible block: ``[N, h, w, 3] -> [N, H, W, 3]``."""
    resized = F.interpolate(images.permute(0, 3, 1, 2), size=(height, width), mode="nearest")
    return resized.permute(0, 2, 3, 1)


def grid(tiles: torch.Tensor, gap: int = 4) -> torch.Tensor:
    """``[rows, cols, H, W, 3] -> [rows·(H+gap)-gap, cols·(W+gap)-gap, 3]`` on a white background."""
    rows, cols, height, width, _ = tiles.shape
    canvas = torch.ones(rows * (height + gap) - gap, cols * (width + gap) - gap, 3)
    for row in range(rows):
        for col in range(cols):
            top, left = row * (height + gap), col * (width + gap)
            canvas[top:top + height, left:left + width] = tiles[row, col]
    return canvas
