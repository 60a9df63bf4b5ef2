"""Attention Regulation node: edits cross-attention inside the model, so every sampler node can run it."""
from __future__ import annotations

from typing import Any

from ..guidance.comfy_bridge import UnsupportedModelError, with_regulation
from ..guidance.regulation import RegulationConfig
from ..guidance.regulation.config import MODES
from ..guidance.regulation.run import RegulationSpec
from ..guidance.subjects.tokens import SubjectTokens
from .common import CATEGORY, TOKENS_TYPE, UNIQUE_ID, NodeInputError

PAPER = RegulationConfig()


class AttentionRegulation:
    DISPLAY_NAME = "Attention Regulation"
    DESCRIPTION = (
        "Attention Regulation (Zhang et al., ECCV 2024): during the first sampling steps, the cross-attention layers "
        "at 1/32 of the image size get a smooth bias on the subject tokens' attention logits, optimised at every "
        "step so that each subject reaches a strong peak and an equal share of attention. No gradient flows "
        "through the UNet and the latent is not changed directly. Connect the output to the stock KSampler or any "
        "sampler node. Needs images of about 512x512 px or more (SD1.x/SD2.x) so that those layers' maps are at "
        "least 16x16; below that it does nothing and says so on this node and in the log."
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
                "model": ("MODEL", {"tooltip": "An SD1.x, SD2.x or SDXL model."}),
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
                    "tooltip": "default (the pack's choice, not the authors' code): edited attention rows are a "
                               "plain softmax summing to 1, as the paper writes it, logits stay fp32, and every "
                               "image of a batch gets its own bias. reference: exactly as the authors coded it "
                               "(start and end token attention written back after the edit, so rows sum to more "
                               "than 1; fp16 rounding; one best iterate per batch). Both run the same bias search "
                               "with the same targets.",
                }),
            },
            "hidden": UNIQUE_ID,
        }

    def apply(self, model: Any, tokens: SubjectTokens, edit_steps: int, iterations: int, mode: str,
              unique_id: str | None = None) -> tuple[Any]:
        config = RegulationConfig(mode=mode, iterations=iterations, edit_steps=edit_steps)
        try:
            spec = RegulationSpec.from_tokens(tokens, config)
        except ValueError as error:
            raise NodeInputError(self.DISPLAY_NAME, "tokens", str(error)) from error
        try:
            return (with_regulation(model, spec, node_id=unique_id),)
        except UnsupportedModelError as error:
            raise NodeInputError(self.DISPLAY_NAME, "model", str(error)) from error


NODE_CLASS_MAPPINGS = {"AG_AttentionRegulation": AttentionRegulation}
NODE_DISPLAY_NAME_MAPPINGS = {node_id: cls.DISPLAY_NAME for node_id, cls in NODE_CLASS_MAPPINGS.items()}
