"""Attention maps as pictures: step selection, normalisation, colour maps, overlays and grids.

Pure PyTorch. Maps are ``[..., h, w]`` values; pictures are ``[..., H, W, 3]`` in 0..1.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

STEP_CHOICES = ("all", "every k-th", "last", "list")
NORMALIZATIONS = ("per map", "per subject", "global")

# Matplotlib's "viridis" (public domain, CC0) sampled at 11 evenly spaced points; linear interpolation between them
# stays within a few percent of the full 256-entry table.
VIRIDIS_ANCHORS = torch.tensor([
    [0.267004, 0.004874, 0.329415], [0.282327, 0.140926, 0.457517], [0.253935, 0.265254, 0.529983],
    [0.206756, 0.371758, 0.553117], [0.163625, 0.471133, 0.558148], [0.127568, 0.566949, 0.550556],
    [0.134692, 0.658636, 0.517649], [0.266941, 0.748751, 0.440573], [0.477504, 0.821444, 0.318195],
    [0.741388, 0.873449, 0.149561], [0.993248, 0.906157, 0.143936],
])
_EVEN = tuple(i / (len(VIRIDIS_ANCHORS) - 1) for i in range(len(VIRIDIS_ANCHORS)))

# Each channel is a piecewise-linear curve through (position, value) knots. "jet" and "hot" are the classic
# MATLAB definitions (the knots matplotlib also uses); "gray" is the identity.
COLOR_MAPS: dict[str, tuple[tuple[tuple[float, float], ...], ...]] = {
    "viridis": tuple(tuple(zip(_EVEN, VIRIDIS_ANCHORS[:, channel].tolist())) for channel in range(3)),
    "jet": (((0.0, 0.0), (0.35, 0.0), (0.66, 1.0), (0.89, 1.0), (1.0, 0.5)),
            ((0.0, 0.0), (0.125, 0.0), (0.375, 1.0), (0.64, 1.0), (0.91, 0.0), (1.0, 0.0)),
            ((0.0, 0.5), (0.11, 1.0), (0.34, 1.0), (0.65, 0.0), (1.0, 0.0))),
    "hot": (((0.0, 0.0416), (0.365079, 1.0), (1.0, 1.0)),
            ((0.0, 0.0), (0.365079, 0.0), (0.746032, 1.0), (1.0, 1.0)),
            ((0.0, 0.0), (0.746032, 0.0), (1.0, 1.0))),
    "gray": (((0.0, 0.0), (1.0, 1.0)),) * 3,
}


def select_steps(steps: Sequence[int], which: str, every: int = 1, listed: str = "") -> list[int]:
    """Indices into ``steps`` (the recorded step numbers) to show.

    ``which``: "all"; "every k-th" (steps[0], steps[k], ...); "last"; "list" (comma-separated step numbers from
    ``listed``, in the order given). Raises ValueError for an unknown choice, k < 1 or a step that was not recorded.
    """
    if which == "all":
        return list(range(len(steps)))
    if which == "every k-th":
        if every < 1:
            raise ValueError(f"k must be at least 1, got {every}")
        return list(range(0, len(steps), every))
    if which == "last":
        return [len(steps) - 1] if steps else []
    if which == "list":
        position = {step: index for index, step in enumerate(steps)}
        try:
            wanted = [int(part) for part in listed.replace(" ", "").split(",") if part]
        except ValueError as error:
            raise ValueError(f"the step list must be comma-separated whole numbers, got {listed!r}") from error
        if not wanted:
            raise ValueError("the step list is empty; give step numbers such as 0, 10, 19")
        missing = [step for step in wanted if step not in position]
        if missing:
            recorded = f"{steps[0]}..{steps[-1]}" if steps else "none"
            raise ValueError(f"steps {missing} were not recorded (recorded: {recorded})")
        return [position[step] for step in wanted]
    raise ValueError(f"unknown step choice {which!r}; one of {', '.join(STEP_CHOICES)}")


def _scale(maps: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    low = maps.amin(dim=dims, keepdim=True)
    high = maps.amax(dim=dims, keepdim=True)
    return (maps - low) / (high - low).clamp_min(1e-12)


def normalize(maps: torch.Tensor) -> torch.Tensor:
    """Scale each ``[h, w]`` map of ``[..., h, w]`` to 0..1 by its own minimum and maximum."""
    return _scale(maps, (-2, -1))


def normalize_history(maps: torch.Tensor, mode: str) -> torch.Tensor:
    """``[steps, B, S, h, w]`` -> 0..1, per batch image: "per map" (each map on its own), "per subject" (one scale
    for a subject over all steps, so its growth shows) or "global" (one scale for all subjects and steps)."""
    dims = {"per map": (-2, -1), "per subject": (0, -2, -1), "global": (0, 2, -2, -1)}.get(mode)
    if dims is None:
        raise ValueError(f"unknown normalisation {mode!r}; one of {', '.join(NORMALIZATIONS)}")
    return _scale(maps, dims)


def _piecewise(values: torch.Tensor, knots: Sequence[tuple[float, float]]) -> torch.Tensor:
    xs = torch.tensor([x for x, _ in knots], dtype=values.dtype, device=values.device)
    ys = torch.tensor([y for _, y in knots], dtype=values.dtype, device=values.device)
    upper = torch.searchsorted(xs, values.contiguous(), right=True).clamp(1, len(xs) - 1)
    lower = upper - 1
    weight = ((values - xs[lower]) / (xs[upper] - xs[lower])).clamp(0, 1)
    return ys[lower] + (ys[upper] - ys[lower]) * weight


def colorize(maps: torch.Tensor, color_map: str = "viridis") -> torch.Tensor:
    """Values in 0..1, ``[..., h, w]`` -> colours ``[..., h, w, 3]`` from one of ``COLOR_MAPS``."""
    if color_map not in COLOR_MAPS:
        raise ValueError(f"unknown colour map {color_map!r}; one of {', '.join(COLOR_MAPS)}")
    values = maps.clamp(0, 1)
    return torch.stack([_piecewise(values, knots) for knots in COLOR_MAPS[color_map]], dim=-1)


def upscale(images: torch.Tensor, height: int, width: int, smooth: bool = False) -> torch.Tensor:
    """Resize ``[N, h, w, C] -> [N, H, W, C]``: nearest-neighbour (each attention pixel stays a visible block) or,
    with ``smooth``, bilinear (for overlays on the decoded image)."""
    channels_first = images.permute(0, 3, 1, 2)
    if smooth:
        resized = F.interpolate(channels_first, size=(height, width), mode="bilinear", align_corners=False)
    else:
        resized = F.interpolate(channels_first, size=(height, width), mode="nearest")
    return resized.permute(0, 2, 3, 1)


def tile_size(height: int, width: int, longest: int) -> tuple[int, int]:
    """``(H, W)`` with the aspect ratio of ``height × width`` and the longer side ``longest`` px."""
    scale = longest / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def heatmap_tiles(values: torch.Tensor, color_map: str, height: int, width: int, image: torch.Tensor | None = None,
                  opacity: float = 0.5) -> torch.Tensor:
    """``[N, h, w]`` values in 0..1 -> ``[N, H, W, 3]`` tiles, laid over ``image`` ``[H', W', 3]`` (resized to
    ``H × W``) with the heatmap at ``opacity``, or on their own (``image`` None)."""
    colours = colorize(values, color_map)
    if image is None:
        return upscale(colours, height, width)
    background = upscale(image[None, ..., :3].float(), height, width, smooth=True)
    return background * (1 - opacity) + upscale(colours, height, width, smooth=True) * opacity


def grid(tiles: torch.Tensor, gap: int = 4) -> torch.Tensor:
    """``[rows, cols, H, W, 3] -> [rows·(H+gap)-gap, cols·(W+gap)-gap, 3]`` on a white background."""
    rows, cols, height, width, _ = tiles.shape
    canvas = torch.ones(rows * (height + gap) - gap, cols * (width + gap) - gap, 3)
    for row in range(rows):
        for col in range(cols):
            top, left = row * (height + gap), col * (width + gap)
            canvas[top:top + height, left:left + width] = tiles[row, col]
    return canvas
