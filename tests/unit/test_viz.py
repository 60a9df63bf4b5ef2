"""Attention pictures: step selection, normalisation, colour maps, overlays, grid layout."""
import pytest
import torch

from attention_guidance.guidance.inspection import viz


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


def test_colorize_between_viridis_anchors_interpolates_linearly():
    colours = viz.colorize(torch.tensor([[0.05, 0.95]]))
    torch.testing.assert_close(colours[0, 0], (viz.VIRIDIS_ANCHORS[0] + viz.VIRIDIS_ANCHORS[1]) / 2)
    torch.testing.assert_close(colours[0, 1], (viz.VIRIDIS_ANCHORS[9] + viz.VIRIDIS_ANCHORS[10]) / 2)


@pytest.mark.parametrize("name, low, high", [("gray", [0, 0, 0], [1, 1, 1]), ("hot", [0.0416, 0, 0], [1, 1, 1]),
                                             ("jet", [0, 0, 0.5], [0.5, 0, 0])])
def test_colour_maps_ends_and_clamping(name, low, high):
    colours = viz.colorize(torch.tensor([[-1.0, 0.0, 1.0, 2.0]]), name)
    torch.testing.assert_close(colours[0, 1], torch.tensor(low, dtype=torch.float32))
    torch.testing.assert_close(colours[0, 2], torch.tensor(high, dtype=torch.float32))
    assert torch.equal(colours[0, 0], colours[0, 1]) and torch.equal(colours[0, 3], colours[0, 2])


def test_gray_is_the_identity_and_jet_is_green_in_the_middle():
    values = torch.linspace(0, 1, 11)[None]
    torch.testing.assert_close(viz.colorize(values, "gray"), values[..., None].expand(1, 11, 3))
    assert viz.colorize(torch.tensor([[0.5]]), "jet")[0, 0].tolist() == pytest.approx([0.4838709, 1.0, 0.4838709])


def test_unknown_colour_map():
    with pytest.raises(ValueError, match="unknown colour map 'rainbow'; one of viridis, jet, hot, gray"):
        viz.colorize(torch.zeros(1, 1), "rainbow")


STEPS = (0, 1, 2, 3, 4, 5, 6)


@pytest.mark.parametrize("which, every, listed, expected", [
    ("all", 1, "", [0, 1, 2, 3, 4, 5, 6]), ("every k-th", 3, "", [0, 3, 6]), ("every k-th", 10, "", [0]),
    ("last", 1, "", [6]), ("list", 1, "6, 0,3", [6, 0, 3]),
])
def test_select_steps(which, every, listed, expected):
    assert viz.select_steps(STEPS, which, every, listed) == expected


def test_select_steps_maps_step_numbers_to_indices():
    assert viz.select_steps((10, 11, 12), "list", listed="12, 10") == [2, 0]


@pytest.mark.parametrize("which, every, listed, message", [
    ("every k-th", 0, "", "k must be at least 1"), ("list", 1, "", "the step list is empty"),
    ("list", 1, "2, 9", r"steps \[9\] were not recorded \(recorded: 0..6\)"),
    ("list", 1, "two", "comma-separated whole numbers"), ("first", 1, "", "unknown step choice 'first'"),
])
def test_select_steps_rejects(which, every, listed, message):
    with pytest.raises(ValueError, match=message):
        viz.select_steps(STEPS, which, every, listed)


def test_normalize_history_scopes():
    maps = torch.rand(3, 2, 2, 4, 5)  # [steps, B, S, h, w]
    maps[1, 0, 1] += 10  # one subject of image 0 is much stronger at step 1
    per_map = viz.normalize_history(maps, "per map")
    assert torch.allclose(per_map.amax(dim=(-2, -1)), torch.ones(3, 2, 2))
    per_subject = viz.normalize_history(maps, "per subject")
    assert torch.allclose(per_subject.amax(dim=(0, -2, -1)), torch.ones(2, 2))
    assert per_subject[[0, 2], 0, 1].max() < 0.2  # dim next to its strong step
    whole = viz.normalize_history(maps, "global")
    assert whole[:, 0, 0].max() < 0.2 and whole[:, 1].max() == 1.0  # image 1 has its own scale
    with pytest.raises(ValueError, match="unknown normalisation 'none'"):
        viz.normalize_history(maps, "none")


def test_tile_size_keeps_the_aspect_ratio():
    assert viz.tile_size(8, 12, 240) == (160, 240)
    assert viz.tile_size(96, 64, 48) == (48, 32)


def test_heatmap_tiles_alone_and_over_an_image():
    values = torch.tensor([[[0.0, 1.0]]])  # [1, 1, 2]
    alone = viz.heatmap_tiles(values, "gray", 4, 8)
    assert alone.shape == (1, 4, 8, 3) and alone[0, :, :4].max() == 0 and alone[0, :, 4:].min() == 1  # blocks
    image = torch.full((2, 4, 3), 0.2)
    assert torch.allclose(viz.heatmap_tiles(values, "gray", 4, 8, image, opacity=0.0), torch.full((1, 4, 8, 3), 0.2))
    full = viz.heatmap_tiles(values, "gray", 4, 8, image, opacity=1.0)
    assert full[0, 0, 0].tolist() == [0, 0, 0] and full[0, 0, -1].tolist() == [1, 1, 1]
    half = viz.heatmap_tiles(values, "gray", 4, 8, image, opacity=0.5)
    torch.testing.assert_close(half, 0.1 + full * 0.5)
