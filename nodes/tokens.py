"""Subject token nodes: pick the prompt's subject (and attribute) tokens the guidance methods act on."""
from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import nodes as comfy_nodes

from ..guidance.comfy_bridge.text import sequence_tokens
from ..guidance.comfy_bridge.tokenizers import clip_family
from ..guidance.subjects.encoders import map_sequence_subjects
from ..guidance.subjects.token_view import subjects_view
from ..guidance.subjects.tokens import SubjectTokenError, SubjectTokens
from .common import CATEGORY, TOKENS_TYPE, UNIQUE_ID, NodeInputError, warn_on_node

logger = logging.getLogger("attention_guidance")

SUBJECTS_TOOLTIP = (
    "Comma-separated phrases from the prompt. In each phrase the last word is the subject, the words before it are "
    "its attributes: 'red apple, blue car'. Write 'cat#2' for the second 'cat'. Leave empty to pick the subjects "
    "automatically: the last noun-like word of each phrase, passing over style, quality and describing words and "
    "numbers (the picks, and what was passed over, are shown on the node and in the log)."
)
TEXT_TOOLTIP = "The prompt, exactly as for CLIP Text Encode (weights like (red apple:1.2) and embeddings work)."


def _subject_tokens(node: str, clip: Any, text: str, subjects: str, conditioning: list, node_id: str | None
                    ) -> tuple[SubjectTokens, dict]:
    """The subjects' tokens, carrying the prompt's encoding (``conditioning``, CLIP Text Encode's output for
    ``text``) so that the samplers can tell whether they sample that prompt, and the node's ``ui``: the picks and
    warnings as text, and the token view (the page draws it); automatic picks and warnings are shown on the node."""
    sequence = sequence_tokens(clip, text)
    try:
        tokens = map_sequence_subjects(text, sequence, subjects)
    except SubjectTokenError as error:
        raise NodeInputError(node, "subjects", str(error)) from error
    logger.info("%s: %s", node, tokens.describe())
    warn_on_node(node, node_id, tokens.warnings(), notes=tokens.describe() if tokens.auto_picked else "")
    shown = {"text": ["\n".join([tokens.describe(), *(f"Warning: {w}" for w in tokens.warnings())])],
             "ag_token_view": [subjects_view(sequence, tokens, clip_family(clip))]}
    return replace(tokens, encoding=conditioning[0][0][0]), shown


def _inputs() -> dict:
    return {
        "required": {
            "clip": ("CLIP", {"tooltip": "The text encoder of the model that samples: its checkpoint's CLIP, or for "
                              "FLUX, Chroma and SD3.5 the CLIP loader's output (DualCLIPLoader, CLIPLoader, "
                              "TripleCLIPLoader). FLUX and Chroma read T5 tokens, SD3.5 CLIP and T5 tokens."}),
            "text": ("STRING", {"multiline": True, "dynamicPrompts": True, "tooltip": TEXT_TOOLTIP}),
            "subjects": ("STRING", {"default": "", "tooltip": SUBJECTS_TOOLTIP}),
        },
        "hidden": UNIQUE_ID,
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

    def encode(self, clip: Any, text: str, subjects: str, unique_id: str | None = None) -> dict:
        conditioning = comfy_nodes.CLIPTextEncode().encode(clip, text)[0]
        tokens, shown = _subject_tokens(self.DISPLAY_NAME, clip, text, subjects, conditioning, unique_id)
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

    def pick(self, clip: Any, text: str, subjects: str, unique_id: str | None = None) -> dict:
        conditioning = comfy_nodes.CLIPTextEncode().encode(clip, text)[0]
        tokens, shown = _subject_tokens(self.DISPLAY_NAME, clip, text, subjects, conditioning, unique_id)
        return {"ui": shown, "result": (tokens,)}


NODE_CLASS_MAPPINGS = {"AG_TextEncodeWithTokens": TextEncodeWithTokens, "AG_TokenPicker": TokenPicker}
NODE_DISPLAY_NAME_MAPPINGS = {node_id: cls.DISPLAY_NAME for node_id, cls in NODE_CLASS_MAPPINGS.items()}
