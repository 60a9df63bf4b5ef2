"""Looking at attention: record it without guidance, draw it as heatmaps, save the raw maps."""
from __future__ import annotations

import os

import folder_paths
import torch
from safetensors.torch import save_file

import nodes as comfy_nodes

from ..guidance.engine.spec import GuidanceSpec
from ..guidance.inspection.figures import ARRANGEMENTS, MAX_SIDE, FigureOptions, attention_figures, figure_tile
from ..guidance.inspection.history import AttentionHistory, history_tensors
from ..guidance.inspection.viz import COLOR_MAPS, NORMALIZATIONS, STEP_CHOICES, select_steps
from ..guidance.subjects.tokens import SubjectTokens
from .common import ATTENTION_TYPE, CATEGORY, TOKENS_TYPE, UNIQUE_ID, GuidanceNode, NodeInputError, warn_on_node
from .dit_inputs import dit_blocks_input, with_dit_blocks

ATTENTION_TOOLTIP = "The attention maps from a Guided KSampler's attention output."


class RecordAttention(GuidanceNode):
    DISPLAY_NAME = "Record Attention (no guidance)"
    DESCRIPTION = ("A guidance that changes nothing: the Guided KSampler then samples exactly like the stock "
                   "KSampler (bit-identical) and outputs each subject's attention at every step, to inspect what "
                   "the model attends to for any prompt.")
    OUTPUT_TOOLTIPS = ("Recording only; connect it to the Guided KSampler's guidance input.",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "tokens": (TOKENS_TYPE, {"tooltip": "The subjects whose attention is recorded, from CLIP Text Encode "
                                                "(with subjects)."}),
        }, "optional": dit_blocks_input()}

    def build(self, tokens: SubjectTokens, dit_blocks: str = "auto") -> tuple[GuidanceSpec]:
        return (with_dit_blocks(self.DISPLAY_NAME, GuidanceSpec(tokens, (), ()), dit_blocks),)


class VisualizeAttention:
    DISPLAY_NAME = "Visualize Attention"
    DESCRIPTION = ("Draws each subject's attention over the sampling steps as heatmaps: one grid of subjects x "
                   "steps per image, or one picture per step, optionally over the decoded image. Shows the result "
                   "on the node (step through several pictures with the picture widget's arrows) and outputs it as "
                   "IMAGE.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("The heatmaps: one picture per batch image (grid) or per batch image and step.",)
    OUTPUT_NODE = True
    FUNCTION = "draw"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "attention": (ATTENTION_TYPE, {"tooltip": ATTENTION_TOOLTIP}),
                "which_steps": (list(STEP_CHOICES), {"default": "every k-th", "tooltip":
                                "Which sampling steps to show: all, every k-th (the first, then every k-th after "
                                "it), the last, or those in the step list."}),
                "every": ("INT", {"default": 5, "min": 1, "max": 1000, "tooltip":
                          "k for 'every k-th': 5 shows steps 0, 5, 10, ..."}),
                "step_list": ("STRING", {"default": "", "tooltip":
                              "For 'list': comma-separated step numbers, counted from 0 (e.g. 0, 10, 19)."}),
                "layout": (list(ARRANGEMENTS), {"default": "grid", "tooltip":
                           "grid: one picture per image, a row per subject and a column per step. one image per "
                           "step: a picture per step with the subjects side by side."}),
                "color_map": (list(COLOR_MAPS), {"default": "viridis", "tooltip":
                              "Colours from low to high attention (viridis: dark blue to yellow)."}),
                "normalization": (list(NORMALIZATIONS), {"default": "per map", "tooltip":
                                  "per map: each map spans the full colour range (shows where). per subject: one "
                                  "scale per subject over the steps (shows its growth). global: one scale for "
                                  "everything (compares subjects)."}),
                "opacity": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.05, "tooltip":
                            "Heatmap opacity over the image input (1: heatmap only). Unused without an image."}),
                "tile_size": ("INT", {"default": 256, "min": 32, "max": 2048, "step": 8, "tooltip":
                              f"Longest side of each map in the picture, in px. A picture is at most {MAX_SIDE} px "
                              "a side: with many steps or subjects the maps are drawn smaller (the node says so)."}),
            },
            "optional": {
                "image": ("IMAGE", {"tooltip": "The decoded images of the same run, to draw the maps over them "
                                               "(one per batch image, or one for all)."}),
            },
            "hidden": UNIQUE_ID,
        }

    def draw(self, attention: AttentionHistory, which_steps: str, every: int, step_list: str, layout: str,
             color_map: str, normalization: str, opacity: float, tile_size: int, image: torch.Tensor | None = None,
             unique_id: str | None = None) -> dict:
        steps_input = {"list": "step_list", "every k-th": "every"}.get(which_steps, "which_steps")
        try:
            indices = select_steps(attention.steps, which_steps, every, step_list)
        except ValueError as error:
            raise NodeInputError(self.DISPLAY_NAME, steps_input, str(error)) from error
        options = FigureOptions(layout, color_map, normalization, tile_size, opacity)
        try:
            tile = figure_tile(attention, indices, options, image)
        except ValueError as error:
            raise NodeInputError(self.DISPLAY_NAME, steps_input, str(error)) from error
        warnings = [] if tile == tile_size else [
            f"maps drawn at {tile} px instead of tile_size {tile_size}, so that the picture stays within "
            f"{MAX_SIDE} px a side; show fewer steps for larger maps"]
        try:
            figures = attention_figures(attention, indices, options, image)
        except ValueError as error:
            culprit = "image" if image is not None else "attention"
            raise NodeInputError(self.DISPLAY_NAME, culprit, str(error)) from error
        preview = comfy_nodes.PreviewImage().save_images(figures, "AG_attention")
        return {"ui": {**preview["ui"], **warn_on_node(self.DISPLAY_NAME, unique_id, warnings)}, "result": (figures,)}


class SaveAttention:
    DISPLAY_NAME = "Save Attention Maps"
    DESCRIPTION = ("Writes the raw attention maps to a .safetensors file in the output folder: the tensor 'maps' "
                   "[steps, batch, subjects, height, width] and, in the metadata, the subject labels, step numbers, "
                   "noise levels and which steps were guided (JSON lists).")
    CATEGORY = CATEGORY
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "save"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "attention": (ATTENTION_TYPE, {"tooltip": ATTENTION_TOOLTIP}),
            "filename_prefix": ("STRING", {"default": "attention/AG_attention", "tooltip":
                                "File name start, relative to the output folder; a counter is appended."}),
        }}

    def save(self, attention: AttentionHistory, filename_prefix: str) -> dict:
        tensors, metadata = history_tensors(attention)
        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(
            filename_prefix, folder_paths.get_output_directory())
        file_name = f"{name}_{counter:05}_.safetensors"
        save_file(tensors, os.path.join(folder, file_name), metadata)
        return {"ui": {"text": [os.path.join(subfolder, file_name)]}}


NODE_CLASS_MAPPINGS = {
    "AG_RecordAttention": RecordAttention,
    "AG_VisualizeAttention": VisualizeAttention,
    "AG_SaveAttention": SaveAttention,
}
NODE_DISPLAY_NAME_MAPPINGS = {node_id: cls.DISPLAY_NAME for node_id, cls in NODE_CLASS_MAPPINGS.items()}
