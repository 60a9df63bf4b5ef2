"""Subject layouts for A-STAR: one mask per subject (painted or built) or one box per subject."""
from __future__ import annotations

from typing import Any

import torch

from ..guidance.subjects.layout import LayoutError, SubjectLayout, box_masks, parse_boxes, stack_masks
from ..guidance.subjects.tokens import SubjectTokens
from .common import CATEGORY, LAYOUT_TYPE, TOKENS_TYPE, NodeInputError

MAX_MASKS = 6
LAYOUT_TOOLTIP = "Where each subject should appear, for A-STAR's layout input."
TOKENS_TOOLTIP = "The subjects to place, from CLIP Text Encode (with subjects); the layout follows their order."


class SubjectLayoutNode:
    DISPLAY_NAME = "Subject Layout (masks)"
    DESCRIPTION = ("A layout from one mask per subject, in the order of the subjects input: white where the subject "
                   "should be. Paint masks in the mask editor of a Load Image node, or build them with mask nodes. "
                   "Masks of any size are stretched to the image; an all-white mask means 'anywhere'.")
    CATEGORY = CATEGORY
    RETURN_TYPES = (LAYOUT_TYPE,)
    RETURN_NAMES = ("layout",)
    OUTPUT_TOOLTIPS = (LAYOUT_TOOLTIP,)
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        def mask_input(index: int) -> tuple:
            return ("MASK", {"tooltip": f"Where subject {index} should appear (white = inside). One mask, or one per "
                                        f"image of the batch."})

        return {
            "required": {"tokens": (TOKENS_TYPE, {"tooltip": TOKENS_TOOLTIP}), "mask_1": mask_input(1)},
            "optional": {f"mask_{index}": mask_input(index) for index in range(2, MAX_MASKS + 1)},
        }

    def build(self, tokens: SubjectTokens, **masks: torch.Tensor) -> tuple[SubjectLayout]:
        count = len(tokens.subjects)
        given = [index for index in range(1, MAX_MASKS + 1) if masks.get(f"mask_{index}") is not None]
        if count > MAX_MASKS:
            raise NodeInputError(self.DISPLAY_NAME, "tokens", f"{count} subjects, but this node takes at most "
                                 f"{MAX_MASKS} masks; name fewer subjects or use Subject Layout (boxes)")
        if given != list(range(1, len(given) + 1)):
            missing = next(index for index in range(1, MAX_MASKS + 1) if index not in given)
            raise NodeInputError(self.DISPLAY_NAME, f"mask_{missing}", "not connected while a later mask is; "
                                 "connect the masks in subject order without gaps")
        if len(given) != count:
            raise NodeInputError(self.DISPLAY_NAME, f"mask_{min(len(given), count) + 1}", f"{len(given)} masks for "
                                 f"{count} subjects ({', '.join(tokens.labels)}); connect exactly one mask per "
                                 "subject, in subject order")
        try:
            return (SubjectLayout(stack_masks([masks[f"mask_{index}"] for index in given]), tokens.labels),)
        except LayoutError as error:
            culprit = f"mask_{error.subject + 1}" if error.subject is not None else "mask_1"
            raise NodeInputError(self.DISPLAY_NAME, culprit, str(error)) from error


class BoxLayout:
    DISPLAY_NAME = "Subject Layout (boxes)"
    DESCRIPTION = ("A layout from one box per subject, in the order of the subjects input, as fractions of the "
                   "image (so one layout fits every image size). Draw the boxes on the node's canvas (drag to draw, "
                   "drag a box to move it, its handles to resize it, Delete removes the selected one) or type them; "
                   "the canvas writes the boxes text, which is what is saved and queued. Also outputs the boxes as "
                   "masks, one per subject, to preview or to edit further.")
    CATEGORY = CATEGORY
    RETURN_TYPES = (LAYOUT_TYPE, "MASK")
    RETURN_NAMES = ("layout", "masks")
    OUTPUT_TOOLTIPS = (LAYOUT_TOOLTIP, "The boxes as a batch of masks, one per subject in subject order "
                                       "(width x height; Convert Mask to Image to preview them).")
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        size = {"min": 16, "max": 16384, "step": 8}
        return {"required": {
            "tokens": (TOKENS_TYPE, {"tooltip": TOKENS_TOOLTIP}),
            "boxes": ("STRING", {"default": "0.05,0.1,0.4,0.5; 0.55,0.3,0.4,0.6", "tooltip":
                      "One box per subject, in subject order, separated by ';': x,y,w,h as fractions of the image "
                      "(x, y: left and top edge; w, h: width and height, not the right and bottom edges; 0,0,1,1 = "
                      "the whole image = anywhere)."}),
            "width": ("INT", {"default": 512, **size, "tooltip":
                      "The image's width in pixels (the mask output's too). The boxes follow the image at any size "
                      "of the same aspect ratio; sampling an image of another aspect ratio is an error rather than "
                      "stretched boxes."}),
            "height": ("INT", {"default": 512, **size, "tooltip":
                       "The image's height in pixels (the mask output's too)."}),
        }}

    def build(self, tokens: SubjectTokens, boxes: str, width: int, height: int) -> tuple[SubjectLayout, Any]:
        try:
            parsed = parse_boxes(boxes)
            if len(parsed) != len(tokens.subjects):
                raise ValueError(f"{len(parsed)} boxes for {len(tokens.subjects)} subjects "
                                 f"({', '.join(tokens.labels)}); give one box per subject, in subject order")
            masks = box_masks(parsed, width, height)
            return SubjectLayout(masks[None], tokens.labels, (width, height)), masks
        except ValueError as error:
            raise NodeInputError(self.DISPLAY_NAME, "boxes", str(error)) from error


NODE_CLASS_MAPPINGS = {"AG_SubjectLayout": SubjectLayoutNode, "AG_BoxLayout": BoxLayout}
NODE_DISPLAY_NAME_MAPPINGS = {node_id: cls.DISPLAY_NAME for node_id, cls in NODE_CLASS_MAPPINGS.items()}
