"""A-STAR: keeps the subjects' attention apart (segregation) and each subject where it was or where the layout
puts it (retention)."""
from __future__ import annotations

from typing import get_args

from ..guidance.losses.astar import AStarConfig, Binarisation, Preprocessing
from ..guidance.methods.astar import astar, paper_schedule
from ..guidance.subjects.layout import SubjectLayout
from ..guidance.subjects.tokens import SubjectTokens
from .common import LAYOUT_TYPE, TOKENS_TYPE, UNIQUE_ID, GuidanceNode, NodeInputError, warn_on_node
from .dit_inputs import dit_blocks_input, with_dit_blocks
from .schedule_inputs import build_schedule, schedule_inputs

_SCHEDULE_INPUTS = ("step_size", "guided_percent")  # A-STAR has no refinement criterion


class AStar(GuidanceNode):
    DISPLAY_NAME = "A-STAR (segregation + retention)"
    DESCRIPTION = ("A-STAR (Agarwal et al. 2023): during the first sampling steps, nudges the latent so that the "
                   "subjects' attention maps overlap less (segregation) and each subject keeps the region it had "
                   "at the previous step (retention), which stops subjects from merging or vanishing. With a layout, "
                   "each subject is held to its mask or box instead. Connect the result to a Guided KSampler, Guided "
                   "Sampler or Apply Attention Guidance.")

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        config = AStarConfig()
        schedule = schedule_inputs(paper_schedule())
        return {
            "required": {
                "tokens": (TOKENS_TYPE, {"tooltip": "The subjects to keep apart, from CLIP Text Encode (with "
                                                    "subjects). Needs two or more for segregation."}),
                **{name: schedule[name] for name in _SCHEDULE_INPUTS},
                "binarisation": (list(get_args(Binarisation)), {"default": config.binarisation, "tooltip":
                                 "Which pixels of a subject's previous map count as its region, to be retained. "
                                 "half_max (default): at least half the map's peak, the peak region only. mean: "
                                 "above the map's mean, a larger region with background. minmax_0.5: half way "
                                 "between the map's minimum and peak. The paper leaves this open."}),
                "preprocessing": (list(get_args(Preprocessing)), {"default": config.preprocessing, "tooltip":
                                  "ae (default): Attend-and-Excite's sharpening and 3x3 smoothing of the maps "
                                  "before the losses. raw: the attention probabilities as they are. The paper "
                                  "leaves this open."}),
                "weight": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.05, "tooltip":
                           "Multiplies the A-STAR loss (segregation + retention), e.g. against another guidance "
                           "in Combine Guidance. 0 turns it off. Paper: 1."}),
            },
            "optional": {
                "layout": (LAYOUT_TYPE, {"tooltip": "Where each subject should appear (Subject Layout nodes), "
                                                    "made from the same tokens. Subjects whose mask covers the "
                                                    "whole image keep their own region. Not connected: no layout."}),
                **dit_blocks_input(),
            },
            "hidden": UNIQUE_ID,
        }

    def build(self, tokens: SubjectTokens, step_size: float, guided_percent: float, binarisation: str,
              preprocessing: str, weight: float, layout: SubjectLayout | None = None, dit_blocks: str = "auto",
              unique_id: str | None = None) -> dict:
        schedule = build_schedule(self.DISPLAY_NAME, step_size, guided_percent, "", "", 0)
        config = AStarConfig(preprocessing=preprocessing, binarisation=binarisation)
        try:
            spec = astar(tokens, schedule, config, layout, weight)
        except ValueError as error:
            raise NodeInputError(self.DISPLAY_NAME, "layout", str(error)) from error
        warnings = []
        if len(tokens.subjects) == 1:
            warnings.append(f"one subject ({tokens.labels[0]}): segregation keeps two or more subjects apart, so "
                            "only retention acts; name every subject of the prompt in the subjects input")
        spec = with_dit_blocks(self.DISPLAY_NAME, spec, dit_blocks)
        return {"ui": warn_on_node(self.DISPLAY_NAME, unique_id, warnings), "result": (spec,)}


NODE_CLASS_MAPPINGS = {"AG_AStar": AStar}
NODE_DISPLAY_NAME_MAPPINGS = {node_id: cls.DISPLAY_NAME for node_id, cls in NODE_CLASS_MAPPINGS.items()}
