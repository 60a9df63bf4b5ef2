"""The input that says which joint blocks of a diffusion transformer (FLUX, SD3.5) a guidance reads."""
from __future__ import annotations

from dataclasses import replace

from ..guidance.capture.blocks import BlockSelectionError, parse_blocks
from ..guidance.engine.spec import GuidanceSpec
from .common import NodeInputError

DIT_BLOCKS_TOOLTIP = (
    "FLUX, Chroma and SD3.5 only (SD1.x, SD2.x and SDXL ignore it): which joint blocks' attention is read, counted "
    "from 0. auto: every double block of FLUX (its single blocks come after them and are never read) and every joint "
    "block of SD3.5, as FOCUS reads them; their average is the map. The guidance pass stops after the deepest block "
    "read, so early blocks only (e.g. 0-9 of FLUX's 19) make each guided step cheaper, at the price of coarser, "
    "less semantic maps. Examples: auto, 0-9, 0, 2, 4-7."
)


def dit_blocks_input() -> dict:
    return {"dit_blocks": ("STRING", {"default": "auto", "tooltip": DIT_BLOCKS_TOOLTIP})}


def with_dit_blocks(node: str, spec: GuidanceSpec, text: str) -> GuidanceSpec:
    """``spec`` reading the blocks ``text`` names; a bad selection is the node's ``dit_blocks`` error."""
    try:
        blocks = parse_blocks(text)
    except BlockSelectionError as error:
        raise NodeInputError(node, "dit_blocks", str(error)) from error
    return spec if blocks == spec.dit_blocks else replace(spec, dit_blocks=blocks)
