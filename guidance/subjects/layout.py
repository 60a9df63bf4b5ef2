"""User layouts for A-STAR (the AG_LAYOUT value): where each subject should be, as masks or boxes.

A layout holds one mask per subject at any resolution and aspect ratio; the masks span the whole image, so a mask
drawn at 512×768 and one at 1024×1536 say the same. At sampling time they are averaged onto the attention grid
(:func:`masks_to_grid`) and replace A-STAR's automatic retention target of their subject.

A mask that covers every attention cell (an all-ones mask, for instance) means "anywhere": that subject gets no
layout target, exactly as without a layout. An all-zero mask is refused.

Shapes:
    masks  ``[N, S, H, W]`` in 0…1: ``N = 1`` (one layout for every image) or one per image of the batch,
           ``S`` subjects in subject order.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


class LayoutError(ValueError):
    """A bad layout; ``subject`` is the 0-based index of the subject whose mask is at fault, if one is."""

    def __init__(self, message: str, subject: int | None = None) -> None:
        super().__init__(message)
        self.subject = subject


@dataclass(frozen=True)
class Box:
    """A box in fractions of the image: left ``x``, top ``y``, width ``w``, height ``h``."""

    x: float
    y: float
    w: float
    h: float


BOX_SYNTAX = "'x,y,w,h' fractions of the image per subject, separated by ';' (e.g. 0.05,0.1,0.4,0.5; 0.55,0.3,0.4,0.6)"


def parse_boxes(text: str) -> tuple[Box, ...]:
    """``"0.05,0.1,0.4,0.5; 0.55,0.3,0.4,0.6"`` -> boxes; each must have ``w, h > 0`` and lie inside ``[0, 1]``."""
    boxes = []
    for index, part in enumerate((part.strip() for part in text.split(";")), start=1):
        if not part:
            continue
        try:
            values = [float(value) for value in part.split(",")]
        except ValueError:
            values = []
        if len(values) != 4 or not all(math.isfinite(value) for value in values):
            raise ValueError(f"box {index} ({part!r}) is not four numbers; write {BOX_SYNTAX}")
        box = Box(*values)
        if box.w <= 0 or box.h <= 0:
            raise ValueError(f"box {index} ({part!r}) has a width or height <= 0; give w and h above 0")
        outside = [text for text, out in ((f"x = {box.x:g} is below 0", box.x < 0),
                                          (f"y = {box.y:g} is below 0", box.y < 0),
                                          (f"x + w = {box.x + box.w:g} is above 1", box.x + box.w > 1),
                                          (f"y + h = {box.y + box.h:g} is above 1", box.y + box.h > 1)) if out]
        if outside:
            raise ValueError(f"box {index} ({part!r}) leaves the image: {', '.join(outside)}; "
                             + _corners_hint(box))
        boxes.append(box)
    if not boxes:
        raise ValueError(f"no boxes given; write {BOX_SYNTAX}")
    return tuple(boxes)


def _corners_hint(box: Box) -> str:
    """What to write instead: the box read as corners ``x1,y1,x2,y2`` where that reading is a box inside the image
    (a common habit), else the rule."""
    corners = Box(box.x, box.y, box.w - box.x, box.h - box.y)
    if min(corners.x, corners.y) >= 0 and corners.w > 0 and corners.h > 0 and max(box.w, box.h) <= 1:
        return (f"boxes are x,y,w,h (left, top, width, height), not corners x1,y1,x2,y2; if you meant corners, "
                f"write {corners.x:g},{corners.y:g},{corners.w:g},{corners.h:g}")
    return "keep x, y >= 0, x + w <= 1 and y + h <= 1"


def box_masks(boxes: Sequence[Box], width: int, height: int) -> torch.Tensor:
    """Boxes -> ``[S, height, width]`` masks of 0./1.; pixel edges are the box edges rounded to the nearest pixel."""
    masks = torch.zeros(len(boxes), height, width)
    for index, box in enumerate(boxes):
        left, right = round(box.x * width), round((box.x + box.w) * width)
        top, bottom = round(box.y * height), round((box.y + box.h) * height)
        if right <= left or bottom <= top:
            raise ValueError(f"box {index + 1} is smaller than one pixel at {width}x{height}; enlarge it")
        masks[index, top:bottom, left:right] = 1.0
    return masks


def stack_masks(masks: Sequence[torch.Tensor]) -> torch.Tensor:
    """One ComfyUI MASK per subject (``[H, W]`` or ``[N, H, W]``, any sizes) -> ``[N, S, H, W]``.

    Every mask is resized (bilinear) to the first one's size; mask batches of size 1 are repeated to the largest
    batch, other sizes must agree.
    """
    batches = [mask[None] if mask.dim() == 2 else mask for mask in masks]
    for index, mask in enumerate(batches, start=1):
        if mask.dim() != 3:
            raise LayoutError(f"mask {index} has shape {tuple(mask.shape)}; give a MASK ([H, W] or [N, H, W])",
                              index - 1)
    count = max(mask.shape[0] for mask in batches)
    for index, mask in enumerate(batches, start=1):
        if mask.shape[0] not in (1, count):
            raise LayoutError(f"mask {index} is a batch of {mask.shape[0]} masks while another has {count}; give "
                              f"every subject either one mask or one per image", index - 1)
    size = batches[0].shape[-2:]
    resized = [F.interpolate(mask.float()[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
               if mask.shape[-2:] != size else mask.float() for mask in batches]
    return torch.stack([mask.expand(count, -1, -1) for mask in resized], dim=1)


def masks_to_grid(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """User masks at image resolution ``[N, H_img, W_img]`` (values in 0…1) -> binary ``[N, h, w]`` maps.

    Area averaging (any size and aspect ratio; cells that straddle pixels average the pixels they cover), then
    ``>= 0.5``: a cell belongs to the mask when the mask covers at least half of it.
    """
    averaged = F.adaptive_avg_pool2d(masks.float()[:, None], size)[:, 0]
    return (averaged >= 0.5).float()


@dataclass(frozen=True)
class LayoutGrid:
    """A layout on the attention grid: the masks that replace A-STAR's automatic retention target ``B`` of some
    concepts (paper Sec. 5).

    ``masks``: ``[B or 1, S, H, W]`` binary maps at attention resolution (see :func:`masks_to_grid`), one slot per
    concept in subject order. ``given``: one flag per concept; a concept whose flag is False keeps the automatic
    ``B`` and its slot in ``masks`` is ignored (fill it with zeros).
    """

    masks: torch.Tensor
    given: tuple[bool, ...]

    def __post_init__(self) -> None:
        if self.masks.dim() != 4 or self.masks.shape[1] != len(self.given):
            raise ValueError(
                f"LayoutGrid.masks must be [B or 1, S, H, W] with S = {len(self.given)} concepts, "
                f"got {tuple(self.masks.shape)}"
            )


@dataclass(frozen=True)
class SubjectLayout:
    """The AG_LAYOUT value: ``masks`` ``[N, S, H, W]`` in 0…1 and the ``labels`` of the ``S`` subjects.

    ``image_size`` ``(width, height)`` in px: the image the layout was laid out for, where that is known (boxes);
    an attention grid of another aspect ratio is then refused rather than the layout stretched to it. Without it
    (painted masks), masks are stretched to any image.
    """

    masks: torch.Tensor
    labels: tuple[str, ...]
    image_size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        masks = self.masks
        if masks.dim() != 4 or masks.shape[1] != len(self.labels):
            raise LayoutError(f"a layout needs masks [N, S, H, W] with S = {len(self.labels)} subjects "
                              f"({', '.join(self.labels)}), got {tuple(masks.shape)}; give one mask per subject")
        if not torch.isfinite(masks).all() or masks.min() < 0 or masks.max() > 1:
            raise LayoutError("layout masks must hold values in 0..1")
        empty = masks.flatten(2).amax(dim=2) == 0  # [N, S]
        if empty.any():
            image, subject = (int(i) for i in empty.nonzero()[0])
            raise LayoutError(f"the mask of '{self.labels[subject]}' (subject {subject + 1}, image {image + 1}) is "
                              f"empty; paint the area where that subject should appear, or use an all-white mask "
                              f"for 'anywhere'", subject)

    def grid(self, size: tuple[int, int], batch: int) -> LayoutGrid | None:
        """The layout on an ``h×w`` attention grid for a latent batch of ``batch`` images; None if no subject has
        a target (every mask covers the whole grid, "anywhere").

        Raises ValueError when the mask batch is neither 1 nor ``batch``, when a mask vanishes on the grid (it
        covers less than half of every cell), or when the grid's aspect ratio is not ``image_size``'s.
        """
        count, subjects = self.masks.shape[:2]
        if self.image_size is not None:
            width, height = self.image_size
            expected = size[0] * width / height  # grid columns at the layout's aspect
            if abs(size[1] - expected) > max(1.0, 0.05 * size[1]):
                raise ValueError(
                    f"the box layout was made for a {width}x{height} px image (width/height {width / height:.2f}), "
                    f"but this image's attention grid is {size[1]}x{size[0]} (width/height {size[1] / size[0]:.2f}): "
                    f"the boxes would be stretched. Set the box layout's width and height to the image's size")
        if count not in (1, batch):
            raise ValueError(f"the layout has {count} masks per subject but the latent batch has {batch} images; "
                             f"give one mask per subject, or one per image")
        cells = masks_to_grid(self.masks.flatten(0, 1), size).view(count, subjects, *size)
        vanished = cells.flatten(2).amax(dim=2) == 0
        if vanished.any():
            subject = int(vanished.nonzero()[0][1])
            raise ValueError(f"the mask of '{self.labels[subject]}' is too small for the {size[0]}x{size[1]} "
                             f"attention grid (it must cover at least half of one cell, 1/{size[0]} of the height "
                             f"by 1/{size[1]} of the width); enlarge it")
        given = tuple(bool((cells[:, index] < 1).any()) for index in range(subjects))
        return LayoutGrid(cells, given) if any(given) else None
