"""Attention pictures: normalisation, colour map, grid layout."""
import torch

from attention_guidance.guidance import viz


def test_normalize_spans_zero_to_one_per_map():
    maps = torch.tensor([[[1.0, 3.0], [2.0, 5.0]], [[0.0, 0.0], [0.0, 0.5]]])
    normalized = viz.normalize(maps)
    assert normalized.amin(dim=(-2, -1)).tolist() == [0.0, 0.0]
    assert normalized.amax(dim=(-2, -1)).tolist() == [1.0, 1.0]
    assert normalized[0, 1, 0].item() == 0.25


def test_colorize_hits_the_viridis_ends_and_midpoint():
    colours = viz.colorize(torch.tensor([[0.0, 0.5, 1.0]]))
    torch.testing.assert_close(colours[0, 0], viz.VIRIDIS_ANCHORS[0])
    torch.testing.assert_close(colours[0, 1], viz.VIRIDIS_ANCHORS[5])
    torch.testing.assert_close(colours[0, 2], viz.VIRIDIS_ANCHORS[-1])


def test_grid_places_tiles_with_white_gaps():
    tiles = torch.zeros(2, 3, 4, 5, 3)
    tiles[1, 2] = 0.5
    canvas = viz.grid(tiles, gap=2)
    assert canvas.shape == (2 * 4 + 2, 3 * 5 + 2 * 2, 3)
    assert canvas[4, 0].tolist() == [1.0, 1.0, 1.0]  # gap row
    assert canvas[-1, -1].tolist() == [0.5, 0.5, 0.5]
    assert viz.upscale(tiles[0], 8, 10).shape == (3, 8, 10, 3)
