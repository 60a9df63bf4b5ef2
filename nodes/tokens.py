"""Subject token nodes: pick the prompt's subject (and attribute) tokens the guidance methods act on."""
from __future__ import annotations

import logging
from typing import Any

import nodes as comfy_nodes

from ..guidance.comfy_bridge import prompt_tokens
from ..guidance.comfy_bridge.tokenizers import clip_family
from ..guidance.token_view import subjects_view
from ..guidance.tokens import SubjectTokenError, SubjectTokens, map_subjects
from .common import CATEGORY, TOKENS_TYPE, NodeInputError

logger = logging.getLogger("attention_guidance")

SUBJECTS_TOOLTIP = (
    "Comma-separated phrases from the prompt. In each phrase the last word is the subject, the words before it are "
    "its attributes: 'red apple, blue car'. Write 'cat#2' for the second 'cat'. Leave empty to pick the subjects "
    "automatically (the picks are shown on the node and in the log)."
)
TEXT_TOOLTIP = "The prompt, exactly as for CLIP Text Encode (weights like (red apple:1.2) and embeddings work)."


def _subject_tokens(node: str, clip: Any, text: str, subjects: str) -> tuple[SubjectTokens, dict]:
    """The subjects' tokens and what the node shows: the picks as text, and the token view (the page draws it)."""
    pieces = prompt_tokens(clip, text)
    try:
        tokens = map_subjects(text, pieces, subjects)
    except SubjectTokenError as error:
        raise NodeInputError(node, "subjects", str(error)) from error
    logger.info("%s: %s", node, tokens.describe())
    return tokens, {"text": [tokens.describe()], "ag_token_view": [subjects_view(pieces, tokens, clip_family(clip))]}


def _inputs() -> dict:
    return {
        "required": {
            "clip": ("CLIP", {"tooltip": "The CLIP model of the checkpoint that samples."}),
            "text": ("STRING", {"multiline": True, "dynamicPrompts": True, "tooltip": TEXT_TOOLTIP}),
            "subjects": ("STRING", {"default": "", "tooltip": SUBJECTS_TOOLTIP}),
        }
    }


class TextEncodeWithTokens:
    DISPLAY_NAME = "CLIP Text Encode (with subjects)"
    DESCRIPTION = ("Encodes the prompt like CLIP Text Encode and also outputs the subject tokens that attention "
                   "guidance acts on. While you type, the node shows the prompt's tokens with each subject's tokens "
                   "and attributes highlighted, or why a subject is not found.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("CONDITIONING", TOKENS_TYPE)
    RETURN_NAMES = ("conditioning", "tokens")
    OUTPUT_TOOLTIPS = ("The encoded prompt, identical to CLIP Text Encode's.",
                       "The subjects' token positions and their attributes.")
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return _inputs()

    def encode(self, clip: Any, text: str, subjects: str) -> dict:
        tokens, shown = _subject_tokens(self.DISPLAY_NAME, clip, text, subjects)
        conditioning = comfy_nodes.CLIPTextEncode().encode(clip, text)[0]
        return {"ui": shown, "result": (conditioning, tokens)}


class TokenPicker:
    DISPLAY_NAME = "Subject Token Picker"
    DESCRIPTION = ("Finds the subject tokens of a prompt for attention guidance, for graphs that encode the prompt "
                   "elsewhere. Use the same CLIP and text as the encoder. While you type, the node shows the "
                   "prompt's tokens with each subject's tokens and attributes highlighted, or why a subject is not "
                   "found.")
    CATEGORY = CATEGORY
    RETURN_TYPES = (TOKENS_TYPE,)
    RETURN_NAMES = ("tokens",)
    OUTPUT_TOOLTIPS = ("The subjects' token positions and their attributes.",)
    FUNCTION = "pick"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return _inputs()

    def pick(self, clip: Any, text: str, subjects: str) -> dict:
        tokens, shown = _subject_tokens(self.DISPLAY_NAME, clip, text, subjects)
        return {"ui": shown, "result": (tokens,)}


NODE_CLASS_MAPPINGS = {"AG_TextEncodeWithTokens": TextEncodeWithTokens, "AG_TokenPicker": TokenPicker}
NODE_DISPLAY_NAME_MAPPINGS = {node_id: cls.DISPLAY_NAME for node_id, cls in NODE_CLASS_MAPPINGS.items()}
