"""The host's tokenizers without model weights, per tokenizer family, for tokenising before anything is queued.

A family names the tokenizer class a CLIP uses: ``sd1`` (SD1.x, CLIP-L), ``sd2`` (SD2.x, OpenCLIP-H), ``sdxl``
(SDXL, CLIP-L and OpenCLIP-G), ``flux`` (FLUX.1: T5-XXL, whose tokens the model attends over, and CLIP-L for the
pooled vector), ``chroma`` (T5-XXL alone, unpadded). The tokenizers load their vocabularies from files ComfyUI ships
and the embeddings folders, as the loaders do, so their token positions are the ones the node computes at run time
with the loaded CLIP. SD3 / SD3.5 has no family here: its sequence holds CLIP's 77·k positions only when a CLIP
encoder is loaded, which the tokenizer alone cannot tell.
"""
from __future__ import annotations

import functools
import importlib
from typing import Any

import folder_paths

from ..subjects.tokens import PromptTokens
from .text import sequence_tokens

# family -> (modules, class); SD2's module moved to comfy.text_encoders in 2024 (the 2024 host has comfy.sd2_clip and
# no T5 tokenizers).
_FAMILY_CLASSES = {
    "sd1": (("comfy.sd1_clip",), "SD1Tokenizer"),
    "sd2": (("comfy.text_encoders.sd2_clip", "comfy.sd2_clip"), "SD2Tokenizer"),
    "sdxl": (("comfy.sdxl_clip",), "SDXLTokenizer"),
    "flux": (("comfy.text_encoders.flux",), "FluxTokenizer"),
    "chroma": (("comfy.text_encoders.pixart_t5",), "PixArtTokenizer"),
}
TOKENIZER_FAMILIES = tuple(_FAMILY_CLASSES)
SD3_REFUSAL = ("the token view does not tokenise SD3 / SD3.5 prompts before a run (whether CLIP's positions come "
               "before T5's depends on the encoders loaded); run the graph to see the tokens")


class UnknownFamilyError(ValueError):
    """A tokenizer family the pack cannot tokenise for."""


def _tokenizer_class(family: str) -> type:
    modules, name = _FAMILY_CLASSES[family]
    for module in modules:
        try:
            return getattr(importlib.import_module(module), name)
        except ModuleNotFoundError:
            continue
    raise ModuleNotFoundError(f"none of {', '.join(modules)} is in this ComfyUI")


@functools.lru_cache(maxsize=None)
def _tokenizer(family: str, embedding_directories: tuple[str, ...]) -> Any:
    return _tokenizer_class(family)(embedding_directory=list(embedding_directories))


class _WeightlessClip:
    """The part of a ComfyUI CLIP that tokenising reads (``tokenize`` and ``tokenizer``), without an encoder (so
    never SD3's, the one encoder whose loaded parts decide the sequence)."""

    cond_stage_model = None

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def tokenize(self, text: str) -> dict:
        return self.tokenizer.tokenize_with_weights(text)


def family_sequence_tokens(family: str, text: str) -> list[PromptTokens]:
    """Each text encoder's tokens of ``text`` as a CLIP of ``family`` gives them, in the order the model attends over
    them (the same function as a node run, on a weightless CLIP)."""
    if family == "sd3":
        raise UnknownFamilyError(SD3_REFUSAL)
    if family not in _FAMILY_CLASSES:
        raise UnknownFamilyError(f"no tokenizer for the family {family!r}; the pack tokenises for "
                                 f"{', '.join(TOKENIZER_FAMILIES)}")
    try:
        tokenizer = _tokenizer(family, tuple(folder_paths.get_folder_paths("embeddings")))
    except ModuleNotFoundError as error:
        raise UnknownFamilyError(f"this ComfyUI has no {family} tokenizer ({error})") from error
    return sequence_tokens(_WeightlessClip(tokenizer), text)


def clip_family(clip: Any) -> str | None:
    """The family of a loaded CLIP's tokenizer, None for a tokenizer the pack does not name."""
    for family in TOKENIZER_FAMILIES:
        try:
            cls = _tokenizer_class(family)
        except ModuleNotFoundError:
            continue
        if type(clip.tokenizer) is cls:  # exactly: SD2's class derives from SD1's
            return family
    return None
