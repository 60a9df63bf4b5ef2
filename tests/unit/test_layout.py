"""User layouts: box parsing, masks, validation and the attention grid (guidance/layout.py)."""
import pytest
import torch

from attention_guidance.guidance.subjects import layout as L
from attention_guidance.guidance.subjects.layout import masks_to_grid

LABELS = ("cat", "frog")


def test_boxes_parse_and_become_masks():
    boxes = L.parse_boxes(" 0.05,0.1,0.4,0.5; 0.55, 0.3 ,0.45,0.7 ;")
    assert boxes == (L.Box(0.05, 0.1, 0.4, 0.5), L.Box(0.55, 0.3, 0.45, 0.7))
    masks = L.box_masks(boxes, width=200, height=100)
    assert masks.shape == (2, 100, 200)
    assert masks[0].sum() == 80 * 50 and masks[0, 10:60, 10:90].all()
    assert masks[1].sum() == 90 * 70 and masks[1, 30:, 110:].all()  # x + w = 1 reaches the right edge
    assert set(masks.unique().tolist()) == {0.0, 1.0}


@pytest.mark.parametrize("text, message", [
    ("0.6,0.1,0.5,0.5", r"box 1 \('0.6,0.1,0.5,0.5'\) leaves the image: x \+ w = 1.1 is above 1; keep x, y >= 0, "
                        r"x \+ w <= 1 and y \+ h <= 1"),
    ("0.1,0.1,0.2,0.2; -0.1,0,0.5,0.5", r"box 2 \('-0.1,0,0.5,0.5'\) leaves the image: x = -0.1 is below 0; keep x"),
    ("0.1,0.7,0.2,0.4", r"box 1 .*: y \+ h = 1.1 is above 1"),
    # x1,y1,x2,y2 typed by habit: as x,y,w,h the box leaves the image, as corners it is a box inside it.
    ("0.5,0.1,0.9,0.8", r"box 1 \('0.5,0.1,0.9,0.8'\) leaves the image: x \+ w = 1.4 is above 1; boxes are x,y,w,h "
                        r"\(left, top, width, height\), not corners x1,y1,x2,y2; if you meant corners, write "
                        r"0.5,0.1,0.4,0.7"),
    ("0.1,0.1,0.5", r"box 1 \('0.1,0.1,0.5'\) is not four numbers; write 'x,y,w,h'"),
    ("0.1,0.1,a,0.5", r"box 1 .* is not four numbers"),
    ("0.1,0.1,nan,0.5", r"is not four numbers"),
    ("0.1,0.1,0,0.5", r"box 1 .* width or height <= 0"),
    (" ; ", r"no boxes given; write"),
])
def test_bad_boxes_name_the_box_and_the_fix(text, message):
    with pytest.raises(ValueError, match=message):
        L.parse_boxes(text)


def test_a_box_below_one_pixel_is_refused():
    with pytest.raises(ValueError, match=r"box 1 is smaller than one pixel at 10x10; enlarge it"):
        L.box_masks(L.parse_boxes("0.5,0.5,0.01,0.3"), 10, 10)


def test_stack_masks_resizes_and_broadcasts():
    first = torch.zeros(1, 64, 96)
    first[:, :, :48] = 1
    second = torch.zeros(3, 32, 48)
    second[:, 16:] = 1
    stacked = L.stack_masks([first, second[0], second])
    assert stacked.shape == (3, 3, 64, 96)
    assert torch.equal(stacked[:, 0], first.expand(3, -1, -1))
    assert stacked[:, 1, 40:].min() == 1 and stacked[:, 1, :24].max() == 0  # resized bottom half
    assert torch.equal(stacked[:, 1], stacked[:, 2])


def test_stack_masks_refuses_mismatched_batches_and_shapes():
    with pytest.raises(ValueError, match=r"mask 2 is a batch of 2 masks while another has 3"):
        L.stack_masks([torch.ones(3, 8, 8), torch.ones(2, 8, 8)])
    with pytest.raises(ValueError, match=r"mask 1 has shape \(8,\); give a MASK"):
        L.stack_masks([torch.ones(8)])


def halves(count=1):
    masks = torch.zeros(count, 2, 60, 100)
    masks[:, 0, :, :50] = 1
    masks[:, 1, :, 50:] = 1
    return masks


def test_layout_validation():
    with pytest.raises(ValueError, match=r"S = 2 subjects \(cat, frog\), got \(1, 3, 60, 100\); give one mask per"):
        L.SubjectLayout(torch.ones(1, 3, 60, 100), LABELS)
    with pytest.raises(ValueError, match=r"values in 0..1"):
        L.SubjectLayout(halves() * 2, LABELS)
    empty = halves(2)
    empty[1, 1] = 0
    with pytest.raises(ValueError, match=r"the mask of 'frog' \(subject 2, image 2\) is empty; paint the area"):
        L.SubjectLayout(empty, LABELS)


@pytest.mark.parametrize("image, grid", [((60, 100), (8, 13)), ((512, 512), (16, 16)), ((1000, 400), (32, 13)),
                                         ((37, 53), (2, 2))])
def test_grid_at_any_size_and_aspect_ratio(image, grid):
    masks = torch.zeros(1, 2, *image)
    masks[:, 0, :, : image[1] // 2] = 1
    masks[:, 1, image[0] // 2:, :] = 1
    cells = L.SubjectLayout(masks, LABELS).grid(grid, batch=2)
    assert cells.given == (True, True) and cells.masks.shape == (1, 2, *grid)
    assert torch.equal(cells.masks[0], masks_to_grid(masks[0], grid))
    left_cells = cells.masks[0, 0].sum(dim=0)  # each column is all in or all out
    assert set(left_cells.tolist()) <= {0.0, float(grid[0])} and 0 < left_cells.count_nonzero() < grid[1]


def test_grid_checks_the_batch():
    layout = L.SubjectLayout(halves(3), LABELS)
    assert layout.grid((4, 4), batch=3).masks.shape == (3, 2, 4, 4)
    with pytest.raises(ValueError, match=r"3 masks per subject but the latent batch has 2 images; give one mask per"):
        layout.grid((4, 4), batch=2)


def test_a_mask_too_small_for_the_grid_is_refused():
    masks = halves()
    masks[0, 1] = 0
    masks[0, 1, :4, :4] = 1  # a 4x4 pixel speck on a 60x100 image
    with pytest.raises(ValueError, match=r"mask of 'frog' is too small for the 8x8 attention grid.*enlarge it"):
        L.SubjectLayout(masks, LABELS).grid((8, 8), batch=1)


def test_all_ones_means_anywhere():
    masks = halves()
    masks[0, 1] = 1
    assert L.SubjectLayout(masks, LABELS).grid((8, 8), batch=1).given == (True, False)
    assert L.SubjectLayout(torch.ones(1, 2, 60, 100), LABELS).grid((8, 8), batch=1) is None
    per_image = halves(2)
    per_image[0, 0] = 1  # anywhere in image 1 only: still a target for the batch
    assert L.SubjectLayout(per_image, LABELS).grid((8, 8), batch=2).given == (True, True)


@pytest.mark.parametrize("size,grid,refused", [
    ((512, 512), (16, 24), True),  # laid out square, sampled at 3:2: the boxes would be stretched
    ((768, 512), (16, 24), False),
    ((1536, 1024), (16, 24), False),  # the same aspect at another size
    ((512, 512), (16, 17), False),  # within a cell of the rounding of ceil(h/4)
])
def test_a_box_layout_refuses_an_image_of_another_aspect(size, grid, refused):
    layout = L.SubjectLayout(L.box_masks(L.parse_boxes("0.1,0.1,0.4,0.4"), *size)[None], ("cat",), size)
    if refused:
        with pytest.raises(ValueError, match=r"made for a 512x512 px image \(width/height 1.00\), but this image's "
                                             r"attention grid is 24x16 \(width/height 1.50\).*Set the box layout's "
                                             "width and height to the image's size"):
            layout.grid(grid, 1)
    else:
        assert layout.grid(grid, 1) is not None
    assert L.SubjectLayout(layout.masks, ("cat",)).grid((16, 24), 1) is not None  # painted masks: stretched
