"""Attention figures: grid and per-step layouts, labels, overlays, and the record's .safetensors payload."""
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from attention_guidance.guidance.inspection import captions, figures
from attention_guidance.guidance.inspection import history as record
from attention_guidance.guidance.inspection.figures import FigureOptions


def make_record(steps=4, batch=2, subjects=2, height=6, width=9) -> record.AttentionHistory:
    maps = torch.rand(steps, batch, subjects, height, width, generator=torch.Generator().manual_seed(0))
    return record.AttentionHistory(labels=("cat", "frog")[:subjects], steps=tuple(range(steps)),
                                  sigmas=tuple(float(14 - 3 * i) for i in range(steps)),
                                  guided=tuple(i < 2 for i in range(steps)), maps=maps)


def text_pixels(picture: torch.Tensor) -> int:
    """Dark pixels (labels) in a white margin."""
    return int((picture.mean(-1) < 0.5).sum())


def test_grid_layout_one_labelled_grid_per_image():
    rec = make_record()
    out = figures.attention_figures(rec, [0, 3], FigureOptions(tile=90))
    assert out.shape[0] == 2 and out.shape[-1] == 3 and 0 <= out.min() and out.max() <= 1
    tile_height, tile_width = 60, 90  # the maps' 6:9 aspect ratio
    margin, header = out.shape[2] - (2 * tile_width + figures.GAP), out.shape[1] - (2 * tile_height + figures.GAP)
    assert margin > 0 and header > 0
    assert text_pixels(out[0, header:, :margin]) > 20  # subject labels left of the rows
    assert text_pixels(out[0, :header, margin:]) > 20  # step labels above the columns
    assert not torch.equal(out[0], out[1])  # each image its own maps


def test_labels_name_subjects_and_steps():
    grid = torch.zeros(2 * 40 + 4, 40, 3)
    labelled = captions.label_grid(grid, 40, 40, 4, ["cat", "a much longer subject name"], ["step 3\n(guided)"])
    unlabelled = captions.label_grid(grid, 40, 40, 4, ["cat", "x"], ["step 3"])
    assert labelled.shape[1] > unlabelled.shape[1]  # the margin fits the longer label
    assert labelled.shape[0] > unlabelled.shape[0]  # two header lines
    assert torch.equal(captions.label_grid(grid, 40, 40, 4, [], []), grid)


def test_long_labels_are_cut_to_their_room():
    grid = torch.zeros(20, 20, 3)
    wide = captions.label_grid(grid, 20, 20, 4, ["x" * 400], [])
    assert wide.shape[1] <= 20 + 3 * 20 + 2 * captions.PADDING


def test_one_image_per_step_layout():
    rec = make_record(steps=3, batch=2, subjects=2)
    out = figures.attention_figures(rec, [0, 1, 2], FigureOptions(arrangement="one image per step", tile=64))
    assert out.shape[0] == 2 * 3
    single = figures.attention_figures(make_record(steps=3, batch=1), [1], FigureOptions("one image per step",
                                                                                     tile=64))
    assert single.shape[0] == 1 and single.shape[1] < out.shape[1] * 2


def test_overlay_takes_the_image_aspect_ratio_and_opacity():
    rec = make_record(batch=2)
    images = torch.zeros(2, 48, 96, 3)
    images[1] = 1.0
    out = figures.attention_figures(rec, [0], FigureOptions(tile=96, opacity=0.0), images)
    blank_0, blank_1 = out[0, -48:, -96:], out[1, -48:, -96:]  # the tile of the last row
    assert torch.all(blank_0 == 0) and torch.all(blank_1 == 1)  # opacity 0: just each image
    one_image = figures.attention_figures(rec, [0], FigureOptions(tile=96), images[:1])
    assert one_image.shape == out.shape  # one image for the whole batch


def test_figure_errors():
    rec = make_record(batch=2)
    with pytest.raises(ValueError, match="the image batch has 3 images, the attention 2"):
        figures.attention_figures(rec, [0], FigureOptions(), torch.zeros(3, 8, 8, 3))
    with pytest.raises(ValueError, match="no steps to show"):
        figures.attention_figures(rec, [], FigureOptions())
    with pytest.raises(ValueError, match="unknown arrangement 'mosaic'"):
        figures.attention_figures(rec, [0], FigureOptions(arrangement="mosaic"))


def test_record_round_trips_through_safetensors(tmp_path):
    rec = make_record()
    tensors, metadata = record.history_tensors(rec)
    save_file(tensors, tmp_path / "maps.safetensors", metadata)
    with safe_open(tmp_path / "maps.safetensors", "pt") as opened:
        stored = opened.metadata()
    assert stored["labels"] == '["cat", "frog"]' and stored["steps"] == "[0, 1, 2, 3]"
    assert stored["guided"] == "[true, true, false, false]"
    loaded = record.history_from_tensors(load_file(tmp_path / "maps.safetensors"), stored)
    assert loaded.labels == rec.labels and loaded.steps == rec.steps and loaded.sigmas == rec.sigmas
    assert loaded.guided == rec.guided and torch.equal(loaded.maps, rec.maps)
    with pytest.raises(ValueError, match="not an attention history"):
        record.history_from_tensors(tensors, {})


@pytest.mark.parametrize("arrangement,steps,subjects", [("grid", 10, 2), ("grid", 40, 6), ("one image per step", 3, 6)])
def test_figures_stay_within_the_size_cap(arrangement, steps, subjects):
    """All steps at the largest tile: 10 steps at 2048 px used to make a 20588 px wide picture."""
    rec = make_record(steps=steps, batch=1, subjects=subjects, height=16, width=24)
    rec = record.AttentionHistory(tuple(f"subject {i}" for i in range(subjects)), rec.steps, rec.sigmas, rec.guided,
                                  rec.maps)
    options = FigureOptions(arrangement=arrangement, tile=2048)
    tile = figures.figure_tile(rec, list(range(steps)), options)
    out = figures.attention_figures(rec, list(range(steps)), options)
    assert figures.MIN_TILE <= tile < 2048
    assert max(out.shape[1:3]) <= figures.MAX_SIDE
    # The tile shrinks only about as far as it must (the fit reserves up to three tiles for the row labels).
    assert max(out.shape[1:3]) > figures.MAX_SIDE * 0.5


def test_a_small_figure_keeps_its_tile_and_too_many_steps_are_refused():
    rec = make_record(steps=4, batch=1)
    assert figures.figure_tile(rec, [0, 1, 2, 3], FigureOptions(tile=256)) == 256
    crowded = make_record(steps=400, batch=1)
    with pytest.raises(ValueError, match="do not fit in a picture of at most 4096 px a side.*show fewer steps"):
        figures.attention_figures(crowded, list(range(400)), FigureOptions(tile=256))
