"""AG_ATTENTION as figures: one labelled grid (subjects × steps) or one labelled row per step, per batch image."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .captions import label_grid
from .history import AttentionHistory
from .viz import grid, heatmap_tiles, normalize_history, tile_size

ARRANGEMENTS = ("grid", "one image per step")
GAP = 4


@dataclass(frozen=True)
class FigureOptions:
    """``tile``: longest side of one map in px. ``opacity``: of the heatmap over the image (when there is one)."""

    arrangement: str = "grid"
    color_map: str = "viridis"
    normalization: str = "per map"
    tile: int = 256
    opacity: float = 0.5


def attention_figures(history: AttentionHistory, indices: Sequence[int], options: FigureOptions = FigureOptions(),
                      images: torch.Tensor | None = None) -> torch.Tensor:
    """Figures ``[N, H, W, 3]`` in 0..1 for the recorded steps at ``indices``.

    "grid": N = B, rows are subjects, columns steps. "one image per step": N = B·len(indices), image b's steps
    first; each shows the subjects side by side. ``images`` ``[B or 1, H', W', 3]`` (the decoded batch) puts each
    map over its image, resized to the tile; without it the tiles keep the maps' aspect ratio.
    """
    if options.arrangement not in ARRANGEMENTS:
        raise ValueError(f"unknown arrangement {options.arrangement!r}; one of {', '.join(ARRANGEMENTS)}")
    if history.maps.numel() == 0 or not indices:
        raise ValueError("no steps to show: the history is empty or no recorded step was selected")
    maps = normalize_history(history.maps.float().cpu(), options.normalization)[list(indices)]  # [n, B, S, h, w]
    shown, batch, subjects, height, width = maps.shape
    if images is not None and images.shape[0] not in (1, batch):
        raise ValueError(f"the image batch has {images.shape[0]} images, the attention {batch}; give the decoded "
                         "images of the same run")
    if images is not None:
        images = images.float().cpu()
        height, width = images.shape[1:3]
    tile_height, tile_width = tile_size(height, width, options.tile)
    step_names = [f"step {history.steps[i]}" + (" (guided)" if history.guided[i] else "") for i in indices]

    figures = []
    for b in range(batch):
        image = None if images is None else images[b if images.shape[0] > 1 else 0]
        tiles = heatmap_tiles(maps[:, b].flatten(0, 1), options.color_map, tile_height, tile_width, image,
                              options.opacity).reshape(shown, subjects, tile_height, tile_width, 3)
        if options.arrangement == "grid":
            figures.append(label_grid(grid(tiles.transpose(0, 1), GAP), tile_height, tile_width, GAP,
                                      history.labels, [name.replace(" (", "\n(") for name in step_names]))
        else:
            figures.extend(label_grid(grid(tiles[i][None], GAP), tile_height, tile_width, GAP, [name],
                                      history.labels, step_names) for i, name in enumerate(step_names))
    return torch.stack(figures)
