"""AG_ATTENTION as figures: one labelled grid (subjects × steps) or one labelled row per step, per batch image."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from .captions import PADDING, label_grid
from .history import AttentionHistory
from .viz import grid, heatmap_tiles, normalize_history, tile_size

ARRANGEMENTS = ("grid", "one image per step")
GAP = 4
MAX_SIDE = 4096  # px: the longest side of a figure; larger tiles are scaled down to fit
MIN_TILE = 16  # px: below this a map is no longer readable
_LABEL_ROOM = 84  # px: the most the column labels take above the grid (two lines of the largest font)


@dataclass(frozen=True)
class FigureOptions:
    """``tile``: longest side of one map in px. ``opacity``: of the heatmap over the image (when there is one)."""

    arrangement: str = "grid"
    color_map: str = "viridis"
    normalization: str = "per map"
    tile: int = 256
    opacity: float = 0.5


def fitted_tile(tile: int, rows: int, columns: int, height: int, width: int) -> int:
    """The largest tile side up to ``tile`` with which ``rows x columns`` tiles of maps ``height x width``, labels
    included (a row label takes at most three tiles' widths), fit in ``MAX_SIDE`` px each way.

    Raises ValueError when even ``MIN_TILE`` does not fit.
    """
    for side in range(tile, MIN_TILE - 1, -1):
        tile_height, tile_width = tile_size(height, width, side)
        figure_width = (columns + 3) * tile_width + columns * GAP + 2 * PADDING
        figure_height = rows * (tile_height + GAP) + _LABEL_ROOM
        if figure_width <= MAX_SIDE and figure_height <= MAX_SIDE:
            return side
    raise ValueError(f"{rows} x {columns} maps do not fit in a picture of at most {MAX_SIDE} px a side, even at "
                     f"{MIN_TILE} px a map; show fewer steps")


def figure_tile(history: AttentionHistory, indices: Sequence[int], options: FigureOptions,
                images: torch.Tensor | None = None) -> int:
    """The tile side :func:`attention_figures` draws with: ``options.tile``, or less where the figure would exceed
    ``MAX_SIDE``."""
    subjects, height, width = history.maps.shape[2:]
    if images is not None:
        height, width = images.shape[1:3]
    rows, columns = (subjects, len(indices)) if options.arrangement == "grid" else (1, subjects)
    return fitted_tile(options.tile, rows, columns, height, width)


def attention_figures(history: AttentionHistory, indices: Sequence[int], options: FigureOptions = FigureOptions(),
                      images: torch.Tensor | None = None) -> torch.Tensor:
    """Figures ``[N, H, W, 3]`` in 0..1 for the recorded steps at ``indices``.

    "grid": N = B, rows are subjects, columns steps. "one image per step": N = B·len(indices), image b's steps
    first; each shows the subjects side by side. ``images`` ``[B or 1, H', W', 3]`` (the decoded batch) puts each
    map over its image, resized to the tile; without it the tiles keep the maps' aspect ratio. No figure side
    exceeds ``MAX_SIDE`` px: the tile shrinks to fit (:func:`figure_tile`).
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
    options = replace(options, tile=figure_tile(history, indices, options, images))
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
