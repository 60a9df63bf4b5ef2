"""Attention Regulation node: edits cross-attention inside the model, so every sampler node can run it."""
from __future__ import annotations

from typing import Any

from ..guidance.capture.blocks import BlockSelectionError, parse_blocks
from ..guidance.comfy_bridge import UnsupportedModelError, with_regulation
from ..guidance.regulation import RegulationConfig
from ..guidance.regulation.config import MODES
from ..guidance.regulation.run import RegulationSpec
from ..guidance.subjects.tokens import SubjectTokens
from .common import CATEGORY, TOKENS_TYPE, UNIQUE_ID, NodeInputError

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
        "least 16x16; below that it does nothing and says so on this node and in the log. On FLUX, Chroma and SD3.5 "
        "the same bias goes onto the image tokens' attention logits on the subject tokens in the joint blocks "
        "(dit_blocks)."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The model with Attention Regulation; the input model is left unchanged.",)
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {**_model_and_tokens(), "edit_percent": ("FLOAT", {
            "default": PAPER.edit_percent, "min": 0.0, "max": 100.0, "step": 1.0,
            "tooltip": "Edit the first this many percent of the sampling steps, as the other methods' guided "
                       "percentages (50 at 20 steps: the first 10). 0 turns regulation off (the model samples exactly "
                       f"as without this node). Paper: 25 of 50 steps, {PAPER.edit_percent:g} %.",
        }), **_settings()}, "optional": _dit_blocks(), "hidden": UNIQUE_ID}

    def apply(self, model: Any, tokens: SubjectTokens, edit_percent: float, iterations: int, mode: str,
              dit_blocks: str = "auto", unique_id: str | None = None) -> tuple[Any]:
        return (_regulated(self.DISPLAY_NAME, model, tokens,
                           RegulationConfig(mode=mode, iterations=iterations, edit_percent=edit_percent), dit_blocks,
                           unique_id),)


class AttentionRegulationSteps:
    """The node's first version, whose edit window is a step count: workflows saved with it load and sample as
    they did."""

    DISPLAY_NAME = "Attention Regulation (step count, deprecated)"
    DESCRIPTION = ("Attention Regulation with the edit window as a number of steps, as workflows saved before the "
                   "percentage keep it. Use Attention Regulation for new graphs: its edit_percent means the same at "
                   "any step count.")
    DEPRECATED = True
    CATEGORY = CATEGORY
    RETURN_TYPES = AttentionRegulation.RETURN_TYPES
    RETURN_NAMES = AttentionRegulation.RETURN_NAMES
    OUTPUT_TOOLTIPS = AttentionRegulation.OUTPUT_TOOLTIPS
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {**_model_and_tokens(), "edit_steps": ("INT", {
            "default": 25, "min": 0, "max": 10000,
            "tooltip": "How many of the first sampling steps are edited, at any step count (Attention Regulation's "
                       "edit_percent scales with the steps instead). 0 turns regulation off.",
        }), **_settings()}, "hidden": UNIQUE_ID}  # no dit_blocks: the saved workflows are UNet graphs

    def apply(self, model: Any, tokens: SubjectTokens, edit_steps: int, iterations: int, mode: str,
              unique_id: str | None = None) -> tuple[Any]:
        return (_regulated(self.DISPLAY_NAME, model, tokens,
                           RegulationConfig(mode=mode, iterations=iterations, edit_steps=edit_steps), "auto",
                           unique_id),)


def _model_and_tokens() -> dict:
    return {
        "model": ("MODEL", {"tooltip": "An SD1.x, SD2.x or SDXL model, or FLUX, Chroma or SD3.5 (default mode only)."}),
        "tokens": (TOKENS_TYPE, {
            "tooltip": "The subject tokens of the positive prompt (from CLIP Text Encode (with subjects)). "
                       "All tokens of all subjects are regulated.",
        }),
    }


def _settings() -> dict:
    return {
        "iterations": ("INT", {
            "default": PAPER.iterations, "min": 1, "max": 200,
            "tooltip": "Gradient-descent iterations per edited layer and step; fewer is faster and weaker. "
                       f"Paper: {PAPER.iterations}.",
        }),
        "mode": (list(MODES), {
            "default": PAPER.mode,
            "tooltip": "default (the pack's choice, not the authors' code): edited attention rows are a plain "
                       "softmax summing to 1, as the paper writes it, logits stay fp32, and every image of a batch "
                       "gets its own bias. reference: exactly as the authors coded it (start and end token attention "
                       "written back after the edit, so rows sum to more than 1; fp16 rounding; one best iterate per "
                       "batch; UNets only). Both run the same bias search with the same targets.",
        }),
    }


def _dit_blocks() -> dict:
    return {"dit_blocks": ("STRING", {"default": "auto", "tooltip": DIT_BLOCKS_TOOLTIP})}


def _regulated(node: str, model: Any, tokens: SubjectTokens, config: RegulationConfig, dit_blocks: str,
               node_id: str | None) -> Any:
    try:
        blocks = parse_blocks(dit_blocks)
    except BlockSelectionError as error:
        raise NodeInputError(node, "dit_blocks", str(error)) from error
    if config.mode != "default" and tokens.segments:  # T5 tokens: a FLUX, Chroma or SD3.5 prompt
        raise NodeInputError(node, "mode", "on FLUX, Chroma and SD3 Attention Regulation runs in default mode only: "
                             "reference mode reproduces the authors' UNet arithmetic")
    try:
        spec = RegulationSpec.from_tokens(tokens, config)
    except ValueError as error:
        raise NodeInputError(node, "tokens", str(error)) from error
    try:
        return with_regulation(model, spec, node_id=node_id, dit_blocks=blocks)
    except UnsupportedModelError as error:
        raise NodeInputError(node, "model", str(error)) from error
    except BlockSelectionError as error:
        raise NodeInputError(node, "dit_blocks", str(error)) from error
    except ValueError as error:
        raise NodeInputError(node, "mode", str(error)) from error


NODE_CLASS_MAPPINGS = {
    "AG_AttentionRegulationV2": AttentionRegulation,
    "AG_AttentionRegulation": AttentionRegulationSteps,  # the first version's id, which saved workflows name
}
NODE_DISPLAY_NAME_MAPPINGS = {node_id: cls.DISPLAY_NAME for node_id, cls in NODE_CLASS_MAPPINGS.items()}
