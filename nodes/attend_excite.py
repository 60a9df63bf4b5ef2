"""Attend-and-Excite: excites the most neglected subject's attention as an AG_GUIDANCE."""
from __future__ import annotations

from ..guidance.engine.schedule import GuidanceSchedule
from ..guidance.engine.spec import GuidanceSpec
from ..guidance.losses.attend_excite import AttendExciteConfig
from ..guidance.methods.attend_excite import attend_and_excite
from ..guidance.subjects.tokens import OPEN_CLIP_H, SubjectTokens
from .common import TOKENS_TYPE, GuidanceNode, NodeInputError
from .dit_inputs import dit_blocks_input, with_dit_blocks
from .schedule_inputs import build_schedule, schedule_inputs

NORMALIZE_EOT = ("auto", "on", "off")


class AttendAndExcite(GuidanceNode):
    DISPLAY_NAME = "Attend-and-Excite"
    DESCRIPTION = ("Attend-and-Excite (Chefer et al. 2023): during the first sampling steps, nudges the latent so "
                   "that every subject's strongest attention grows, which brings back neglected subjects. "
                   "Connect the result to a Guided KSampler, Guided Sampler or Apply Attention Guidance.")

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        config = AttendExciteConfig()
        return {"required": {
            "tokens": (TOKENS_TYPE, {"tooltip": "The subjects to excite, from CLIP Text Encode (with subjects)."}),
            **schedule_inputs(GuidanceSchedule()),
            "smoothing": ("BOOLEAN", {"default": config.smooth_attentions, "tooltip":
                          "Smooth each map with the paper's 3x3 Gaussian before taking its maximum (paper: on)."}),
            "smoothing_sigma": ("FLOAT", {"default": config.sigma, "min": 0.05, "max": 5.0, "step": 0.05, "tooltip":
                                "Sigma of the smoothing as the authors' code defines it (paper: 0.5)."}),
            "normalize_eot": (list(NORMALIZE_EOT), {"default": "auto", "tooltip":
                              "Compare subjects against the prompt's words only, ignoring end and padding tokens, as "
                              "the authors do for SD 2.1. auto: on for SD2.x (detected from the CLIP that made the "
                              "tokens, SD2.x's OpenCLIP ViT-H), off for the others."}),
        }, "optional": dit_blocks_input()}

    def build(self, tokens: SubjectTokens, step_size: float, guided_percent: float, refinement_percents: str,
              refinement_thresholds: str, max_refinement_steps: int, smoothing: bool, smoothing_sigma: float,
              normalize_eot: str, dit_blocks: str = "auto") -> tuple[GuidanceSpec]:
        schedule = build_schedule(self.DISPLAY_NAME, step_size, guided_percent, refinement_percents,
                                  refinement_thresholds, max_refinement_steps)
        if normalize_eot not in NORMALIZE_EOT:
            raise NodeInputError(self.DISPLAY_NAME, "normalize_eot", f"choose one of {', '.join(NORMALIZE_EOT)}")
        word_tokens_only = tokens.text_encoder == OPEN_CLIP_H if normalize_eot == "auto" else normalize_eot == "on"
        config = AttendExciteConfig(smooth_attentions=smoothing, sigma=smoothing_sigma, normalize_eot=word_tokens_only)
        return (with_dit_blocks(self.DISPLAY_NAME, attend_and_excite(tokens, schedule, config), dit_blocks),)


NODE_CLASS_MAPPINGS = {"AG_AttendAndExcite": AttendAndExcite}
NODE_DISPLAY_NAME_MAPPINGS = {node_id: cls.DISPLAY_NAME for node_id, cls in NODE_CLASS_MAPPINGS.items()}
