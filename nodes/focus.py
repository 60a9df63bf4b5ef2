"""FOCUS: subjects attend apart and each subject's tokens together, as an AG_GUIDANCE."""
from __future__ import annotations

from ..guidance.engine.schedule import WEIGHTINGS, GuidanceSchedule
from ..guidance.engine.spec import GuidanceSpec
from ..guidance.losses.focus import FocusConfig
from ..guidance.methods.focus import focus, paper_schedule
from ..guidance.subjects.tokens import SubjectTokenError, SubjectTokens
from .common import TOKENS_TYPE, GuidanceNode, NodeInputError
from .dit_inputs import dit_blocks_input, with_dit_blocks

WEIGHTING_TOOLTIP = (
    "How hard each step pushes. auto: FOCUS's stochastic-optimal-control weight on flow models (FLUX, SD3.5), "
    "step_size x (sigma - next sigma) x 2 sigma (sigma + 0.001) / (1 - sigma + 0.001), which puts almost all of the "
    "push on the first step; Attend-and-Excite's decaying step size on SD1.x, SD2.x and SDXL. soc: always FOCUS's "
    "(flow models only). constant: always Attend-and-Excite's."
)


class Focus(GuidanceNode):
    DISPLAY_NAME = "FOCUS (subject separation)"
    DESCRIPTION = ("FOCUS (2025): nudges the latent so that each subject's tokens (its word pieces and its "
                   "attributes) attend to the same region and different subjects to different regions, measured by "
                   "Jensen-Shannon divergences of their attention. Made for FLUX and SD3.5, where it reads the exact "
                   "joint-attention probabilities; works on SD1.x, SD2.x and SDXL too. Connect the result to a Guided "
                   "KSampler, Guided Sampler or Apply Attention Guidance.")

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        schedule, config = paper_schedule(), FocusConfig()
        return {
            "required": {
                "tokens": (TOKENS_TYPE, {"tooltip": "The subjects (with their attributes, e.g. 'red cube, blue "
                                                    "sphere'), from CLIP Text Encode (with subjects)."}),
                "step_size": ("FLOAT", {"default": schedule.scale_factor, "min": 0.0, "max": 1000.0, "step": 0.5,
                              "tooltip": "FOCUS's lambda: how far the updates move the latent. 0 turns guidance "
                                         "off. FOCUS's FLUX notebook: 4."}),
                "guided_percent": ("FLOAT", {"default": schedule.guided_percent, "min": 0.0, "max": 100.0,
                                   "step": 1.0, "tooltip": "Guide the first this-many percent of the steps. FOCUS "
                                   "guides all; with its weighting the second half adds about 2.5 % of the push "
                                   "and half of the cost. 0 turns guidance off."}),
                "weighting": (list(WEIGHTINGS), {"default": schedule.weighting, "tooltip": WEIGHTING_TOOLTIP}),
                "sharpening": ("FLOAT", {"default": config.sharpening, "min": 0.5, "max": 10.0, "step": 0.5,
                               "tooltip": "Maps are raised to this power before the divergences, so that their "
                                          "near-zero pixels do not dominate. FOCUS: 3."}),
                "blur": ("BOOLEAN", {"default": config.blur, "tooltip": "Blur the maps with a 3x3 Gaussian "
                                                                        "(sigma 1) first, as FOCUS does."}),
                "weight": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.05, "tooltip":
                           "Multiplies the FOCUS loss, e.g. against another guidance in Combine Guidance. 0 turns "
                           "it off."}),
            },
            "optional": dit_blocks_input(),
        }

    def build(self, tokens: SubjectTokens, step_size: float, guided_percent: float, weighting: str,
              sharpening: float, blur: bool, weight: float, dit_blocks: str = "auto") -> tuple[GuidanceSpec]:
        try:
            schedule = GuidanceSchedule(guided_percent=guided_percent, refinement_points=(), scale_factor=step_size,
                                        weighting=weighting)
        except ValueError as error:
            raise NodeInputError(self.DISPLAY_NAME, "weighting", str(error)) from error
        try:
            spec = focus(tokens, schedule, FocusConfig(sharpening=sharpening, blur=blur), weight)
        except SubjectTokenError as error:
            raise NodeInputError(self.DISPLAY_NAME, "tokens", str(error)) from error
        return (with_dit_blocks(self.DISPLAY_NAME, spec, dit_blocks),)


NODE_CLASS_MAPPINGS = {"AG_Focus": Focus}
NODE_DISPLAY_NAME_MAPPINGS = {node_id: cls.DISPLAY_NAME for node_id, cls in NODE_CLASS_MAPPINGS.items()}
