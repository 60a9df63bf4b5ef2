"""Test-only node ``AG_TestTinyCheckpoint``: a drop-in for ``CheckpointLoaderSimple`` that returns tiny random-weight
models, so that workflows execute on CPU in seconds.

The pack never registers it: the dev kit's own custom node folder ``test_nodes`` does, in tests only.
"""
from __future__ import annotations

import functools
from typing import Any

from .comfy_host import has_dit
from .tiny_models import FAMILIES, TinyCheckpoint, tiny_checkpoint

NODE_ID = "AG_TestTinyCheckpoint"


def families() -> tuple[str, ...]:
    """SD1.x, SD2.x and SDXL; FLUX, Chroma, SD3 and SD3.5 medium where the host has them."""
    if not has_dit():
        return FAMILIES
    from .tiny_dit import DIT_FAMILIES

    return FAMILIES + DIT_FAMILIES


@functools.cache
def cached_checkpoint(family: str) -> TinyCheckpoint:
    """One tiny checkpoint per family and process: nodes downstream clone the model, never mutate it."""
    if family in FAMILIES:
        return tiny_checkpoint(family)
    from .tiny_dit import tiny_dit_checkpoint

    return tiny_dit_checkpoint(family)


class TinyTestCheckpoint:
    DISPLAY_NAME = "Tiny Test Checkpoint (tests only)"
    DESCRIPTION = ("Tests only: outputs a tiny random-weight model, CLIP and VAE of the chosen family in place of "
                   "Load Checkpoint. Images are noise; the point is that graphs execute quickly.")
    CATEGORY = "attention_guidance/testing"
    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    RETURN_NAMES = ("MODEL", "CLIP", "VAE")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"family": (list(families()), {"tooltip": "The model family whose layout is built."})}}

    def load(self, family: str) -> tuple[Any, Any, Any]:
        checkpoint = cached_checkpoint(family)
        return checkpoint.model, checkpoint.clip, checkpoint.vae


NODE_CLASS_MAPPINGS = {NODE_ID: TinyTestCheckpoint}
NODE_DISPLAY_NAME_MAPPINGS = {NODE_ID: TinyTestCheckpoint.DISPLAY_NAME}
