"""Combine Guidance: two AG_GUIDANCE values acting together on one sampling run."""
from __future__ import annotations

from ..guidance.engine.spec import GuidanceSpec
from ..guidance.methods.combine import CombineError, combine
from .common import CATEGORY, GUIDANCE_TYPE, NodeInputError


class CombineGuidance:
    DISPLAY_NAME = "Combine Guidance"
    DESCRIPTION = ("Runs two guidances together (e.g. Attend-and-Excite and Divide & Bind): both losses steer the "
                   "same latent, each with its own weight, guided steps, step size and refinement points, as if "
                   "each guided alone. A step is guided when either guidance guides it; at a refinement point "
                   "the latent is refined until the guidance that set the point meets its threshold or has made "
                   "its own most updates (each guidance keeps its own cap). Chain "
                   "several Combine nodes for more. Both must come from the same prompt.")
    CATEGORY = CATEGORY
    RETURN_TYPES = (GUIDANCE_TYPE,)
    RETURN_NAMES = ("guidance",)
    OUTPUT_TOOLTIPS = ("Both guidances as one.",)
    FUNCTION = "combine"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "guidance_a": (GUIDANCE_TYPE, {"tooltip": "The first guidance; its subjects come first in the "
                           "attention output."}),
            "guidance_b": (GUIDANCE_TYPE, {"tooltip": "The second guidance, built from the same prompt's tokens."}),
        }}

    def combine(self, guidance_a: GuidanceSpec, guidance_b: GuidanceSpec) -> tuple[GuidanceSpec]:
        try:
            return (combine(guidance_a, guidance_b),)
        except CombineError as error:
            raise NodeInputError(self.DISPLAY_NAME, "guidance_b", str(error)) from error


NODE_CLASS_MAPPINGS = {"AG_CombineGuidance": CombineGuidance}
NODE_DISPLAY_NAME_MAPPINGS = {node_id: cls.DISPLAY_NAME for node_id, cls in NODE_CLASS_MAPPINGS.items()}
