"""Attention Regulation node: edits cross-attention inside the model, so every sampler node can run it."""
from __future__ import annotations

from typing import Any

from ..guidance.comfy_bridge import UnsupportedModelError, with_regulation
from ..guidance.regulation import RegulationConfig
from ..guidance.regulation.config import MODES
from ..guidance.regulation.run import RegulationSpec
from ..guidance.subjects.tokens import SubjectTokens
from ..guidance.capture.blocks import BlockSelectionError, parse_blocks
from .common import CATEGORY, TOKENS_TYPE, NodeInputError

PAPER = RegulationConfig()
DIT_BLOCKS_TOOLTIP = (
    "FLUX, Chroma and SD3.5 only (SD1.x, SD2.x and SDXL ignore it): which joint blocks are edited, counted from 0. "
    "auto: every double block of FLUX and joint block of SD3.5; each edited block runs the bias search at every "
    "edited step, so fewer blocks (e.g. 0-9) cost less. Examples: auto, 0-9, 0, 2, 4-7."
)


class AttentionRegulation:
    DISPLAY_NAME = "Attention Regulation"
    DESCRIPTION = (
        "Attention Regulation (Zhang et al., ECCV 2024): during the first sampling steps, the cross-attention layers "
        "at 1/32 of the image size get a smooth bias on the subject tokens' attention logits, optimised at every "
        "step so that each subject reaches a strong peak and an equal share of attention. No gradient flows "
        "through the UNet and the latent is not changed directly. Connect the output to the stock KSampler or any "
        "sampler node. Needs images of about 512x512 px or more (SD1.x/SD2.x) so that those layers' maps are at "
        "least 16x16; below that it does nothing and says so in the log. On FLUX, Chroma and SD3.5 the same bias "
        "goes onto the image tokens' attention logits on the subject tokens in the joint blocks (dit_blocks)."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The model with Attention Regulation; the input model is left unchanged.",)
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "An SD1.x, SD2.x or SDXL model, or FLUX, Chroma or SD3.5 (default "
                                               "mode only)."}),
                "tokens": (TOKENS_TYPE, {
                    "tooltip": "The subject tokens of the positive prompt (from CLIP Text Encode (with subjects)). "
                               "All tokens of all subjects are regulated.",
                }),
                "edit_steps": ("INT", {
                    "default": PAPER.edit_steps, "min": 0, "max": 10000,
                    "tooltip": "How many of the first sampling steps are edited. 0 turns regulation off (the model "
                               f"samples exactly as without this node). Paper: {PAPER.edit_steps} of 50 steps.",
                }),
                "iterations": ("INT", {
                    "default": PAPER.iterations, "min": 1, "max": 200,
                    "tooltip": "Gradient-descent iterations per edited layer and step; fewer is faster and weaker. "
                               f"Paper: {PAPER.iterations}.",
                }),
                "mode": (list(MODES), {
                    "default": PAPER.mode,
                    "tooltip": "default: edited attention rows sum to 1 and every image of a batch gets its own "
                               "bias. reference: exactly as the authors coded it (start and end token attention "
                               "restored after the edit, fp16 rounding, one best iterate per batch; UNets only).",
                }),
            },
            "optional": {"dit_blocks": ("STRING", {"default": "auto", "tooltip": DIT_BLOCKS_TOOLTIP})},
        }

    def apply(self, model: Any, tokens: SubjectTokens, edit_steps: int, iterations: int, mode: str,
              dit_blocks: str = "auto") -> tuple[Any]:
        config = RegulationConfig(mode=mode, iterations=iterations, edit_steps=edit_steps)
        try:
            blocks = parse_blocks(dit_blocks)
        except BlockSelectionError as error:
            raise NodeInputError(self.DISPLAY_NAME, "dit_blocks", str(error)) from error
        if mode != "default" and tokens.segments:  # T5 tokens: a FLUX, Chroma or SD3.5 prompt
            raise NodeInputError(self.DISPLAY_NAME, "mode", "on FLUX, Chroma and SD3 Attention Regulation runs in "
                                 "default mode only: reference mode reproduces the authors' UNet arithmetic")
        try:
            spec = RegulationSpec.from_tokens(tokens, config)
        except ValueError as error:
            raise NodeInputError(self.DISPLAY_NAME, "tokens", str(error)) from error
        try:
            return (with_regulation(model, spec, dit_blocks=blocks),)
        except UnsupportedModelError as error:
            raise NodeInputError(self.DISPLAY_NAME, "model", str(error)) from error
        except BlockSelectionError as error:
            raise NodeInputError(self.DISPLAY_NAME, "dit_blocks", str(error)) from error
        except ValueError as error:
            raise NodeInputError(self.DISPLAY_NAME, "mode", str(error)) from error


NODE_CLASS_MAPPINGS = {"AG_AttentionRegulation": AttentionRegulation}
NODE_DISPLAY_NAME_MAPPINGS = {node_id: cls.DISPLAY_NAME for node_id, cls in NODE_CLASS_MAPPINGS.items()}
