"""Divide & Bind: attendance (and attribute binding) guidance as an AG_GUIDANCE."""
from __future__ import annotations

from ..guidance.engine.spec import GuidanceSpec
from ..guidance.losses.divide_bind import DivideBindConfig
from ..guidance.methods.divide_bind import FIRST_STEP_MAX_REFINEMENT_STEPS, divide_bind, paper_schedule
from ..guidance.subjects.tokens import SubjectTokenError, SubjectTokens
from .common import TOKENS_TYPE, GuidanceNode, NodeInputError
from .dit_inputs import dit_blocks_input, with_dit_blocks
from .schedule_inputs import build_schedule, schedule_inputs

TV_VARIANTS = {"reference": "coded", "textbook": "textbook"}  # node option -> DivideBindConfig.tv_variant
AUTO_THRESHOLDS = "auto"

MODE_TOOLTIP = ("tv: attendance only, every subject's map is pushed to spread out into a distinct region (the "
                "authors' latest default). tv_bind: attendance plus binding, each attribute's map is pulled onto its "
                "subject's, for prompts like 'a yellow bowl and a blue cat' (used for the paper's examples; name the "
                "attributes in the subjects input). max: Attend-and-Excite's maximum attention instead of TV.")
TV_TOOLTIP = ("How the attendance term measures total variation. reference (default): what the authors' code "
              "computes, whose vertical part compares every row with the last row; the refinement thresholds and the "
              "binding cut-off were tuned on it. textbook: the paper's definition, the mean difference between "
              "horizontal and vertical neighbours; smaller on the same map, and the thresholds are not re-tuned "
              "for it.")

THRESHOLD_TARGET = ("in tv modes, the total variation every subject's map should reach; in max mode, the maximum "
                    "attention. auto: the paper's values for the chosen mode (tv, tv_bind: 0.05, 0.2, 0.3; max: "
                    "0.05, 0.5, 0.8)")


class DivideAndBind(GuidanceNode):
    DISPLAY_NAME = "Divide & Bind"
    DESCRIPTION = ("Divide & Bind (Li et al. 2023): during the first sampling steps, nudges the latent so that "
                   "every subject's attention forms its own region (attendance), and in tv_bind mode so that each "
                   "attribute's attention lands on its subject (binding: 'yellow bowl' stays yellow). Connect the "
                   "result to a Guided KSampler, Guided Sampler or Apply Attention Guidance.")

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        config = DivideBindConfig()
        return {"required": {
            "tokens": (TOKENS_TYPE, {"tooltip": "The subjects, and the attributes bound to them ('yellow bowl, blue "
                                     "cat'), from CLIP Text Encode (with subjects)."}),
            "mode": (["tv", "tv_bind", "max"], {"default": config.mode, "tooltip": MODE_TOOLTIP}),
            "tv_variant": (list(TV_VARIANTS), {"default": "reference", "tooltip": TV_TOOLTIP}),
            **schedule_inputs(paper_schedule(config.mode), target=THRESHOLD_TARGET, thresholds=AUTO_THRESHOLDS),
            "first_step_max_refinement_steps": ("INT", {
                "default": FIRST_STEP_MAX_REFINEMENT_STEPS, "min": 0, "max": 200, "tooltip":
                "Most updates at a refinement point at 0 % (the first step), where the latent is furthest from any "
                f"target (paper: {FIRST_STEP_MAX_REFINEMENT_STEPS})."}),
            "weight": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.05, "tooltip":
                       "Multiplies this guidance's loss; matters when it is combined with another guidance. "
                       "0 turns it off. Paper: 1."}),
        }, "optional": dit_blocks_input()}

    def build(self, tokens: SubjectTokens, mode: str, tv_variant: str, step_size: float, guided_percent: float,
              refinement_percents: str, refinement_thresholds: str, max_refinement_steps: int,
              first_step_max_refinement_steps: int, weight: float, dit_blocks: str = "auto") -> tuple[GuidanceSpec]:
        if refinement_thresholds.strip().lower() == AUTO_THRESHOLDS:
            refinement_thresholds = self._paper_thresholds(mode, refinement_percents)
        schedule = build_schedule(self.DISPLAY_NAME, step_size, guided_percent, refinement_percents,
                                  refinement_thresholds, max_refinement_steps, first_step_max_refinement_steps)
        if tv_variant not in TV_VARIANTS:
            raise NodeInputError(self.DISPLAY_NAME, "tv_variant", f"choose one of {', '.join(TV_VARIANTS)}")
        try:
            config = DivideBindConfig(mode=mode, tv_variant=TV_VARIANTS[tv_variant])
        except ValueError as error:
            raise NodeInputError(self.DISPLAY_NAME, "mode", str(error)) from error
        try:
            spec = divide_bind(tokens, schedule, config, weight)
        except SubjectTokenError as error:
            raise NodeInputError(self.DISPLAY_NAME, "tokens", str(error)) from error
        return (with_dit_blocks(self.DISPLAY_NAME, spec, dit_blocks),)

    def _paper_thresholds(self, mode: str, refinement_percents: str) -> str:
        """The paper's thresholds of ``mode`` as text, for refinement percents with as many points."""
        paper = paper_schedule(mode).refinement_points
        thresholds = ", ".join(f"{point.threshold:g}" for point in paper)
        count = len([part for part in refinement_percents.replace(";", ",").split(",") if part.strip()])
        if count != len(paper):
            raise NodeInputError(self.DISPLAY_NAME, "refinement_thresholds", (
                f"'auto' stands for the paper's {len(paper)} thresholds of {mode} mode ({thresholds}), one per "
                f"refinement point, but refinement_percents gives {count}; type one threshold per point"))
        return thresholds


NODE_CLASS_MAPPINGS = {"AG_DivideAndBind": DivideAndBind}
NODE_DISPLAY_NAME_MAPPINGS = {node_id: cls.DISPLAY_NAME for node_id, cls in NODE_CLASS_MAPPINGS.items()}
