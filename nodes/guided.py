"""Attend-and-Excite and the three ways into the guided sampler: a KSampler, a SAMPLER, a MODEL patch."""
from __future__ import annotations

from typing import Any

import comfy.samplers
import nodes as comfy_nodes

from ..guidance.comfy_bridge import GuidanceUnavailableError, guided_ksample, guided_sampler, with_guidance
from ..guidance.losses.attend_excite import AttendExciteConfig
from ..guidance.record import subject_record
from ..guidance.schedule import GuidanceSchedule, parse_refinement
from ..guidance.spec import GuidanceSpec, attend_and_excite
from ..guidance.tokens import SubjectTokens
from .common import ATTENTION_TYPE, CATEGORY, GUIDANCE_TYPE, TOKENS_TYPE, GuidanceNode, NodeInputError

GUIDANCE_TOOLTIP = "What to steer and when: from Attend-and-Excite (or another guidance node)."


def schedule_inputs(defaults: GuidanceSchedule, target: str | None = None) -> dict:
    """Inputs shared by every latent-guidance method: step size, guided window, refinement.

    ``defaults`` are the method's paper values (shown in the tooltips); ``target`` says what a threshold means and
    its paper values (default: A&E's).
    """
    percents = ", ".join(f"{p.percent:g}" for p in defaults.refinement_points)
    thresholds = ", ".join(f"{p.threshold:g}" for p in defaults.refinement_points)
    target = target or f"the attention every subject should reach (paper: {thresholds})"
    return {
        "step_size": ("FLOAT", {"default": defaults.scale_factor, "min": 0.0, "max": 1000.0, "step": 0.5, "tooltip":
                      "How far each update moves the latent (the papers' scale factor; it decays to "
                      "sqrt(0.5) of this over the run). 0 turns guidance off. Paper default: 20."}),
        "guided_percent": ("FLOAT", {"default": defaults.guided_percent, "min": 0.0, "max": 100.0, "step": 1.0,
                           "tooltip": "Guide the first this-many percent of the sampling steps (50 = the paper's "
                           "first 25 of 50 steps). 0 turns guidance off."}),
        "refinement_percents": ("STRING", {"default": percents, "tooltip":
                                "Where to refine, in percent of the steps (paper: steps 0, 10, 20 of 50 = 0, 20, 40). "
                                "At these steps the latent is updated repeatedly until the target is met. Empty: "
                                "no refinement (fastest)."}),
        "refinement_thresholds": ("STRING", {"default": thresholds, "tooltip":
                                  f"One target per refinement point: {target}."}),
        "max_refinement_steps": ("INT", {"default": defaults.max_refinement_steps, "min": 0, "max": 100, "tooltip":
                                 f"Most updates per refinement point (paper: {defaults.max_refinement_steps}). Each "
                                 f"costs a forward and backward pass of the UNet."}),
    }


def build_schedule(node: str, step_size: float, guided_percent: float, refinement_percents: str,
                   refinement_thresholds: str, max_refinement_steps: int,
                   first_step_max_refinement_steps: int | None = None) -> GuidanceSchedule:
    """The schedule of the shared inputs; ``first_step_max_refinement_steps`` caps a refinement point at 0 %."""
    try:
        points = parse_refinement(refinement_percents, refinement_thresholds)
        if first_step_max_refinement_steps is not None:
            points = tuple(point._replace(max_steps=first_step_max_refinement_steps) if point.percent == 0.0
                           else point for point in points)
        return GuidanceSchedule(guided_percent=guided_percent, refinement_points=points,
                                max_refinement_steps=max_refinement_steps, scale_factor=step_size)
    except ValueError as error:
        raise NodeInputError(node, "refinement_percents", str(error)) from error


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
            "normalize_eot": ("BOOLEAN", {"default": config.normalize_eot, "tooltip":
                              "Compare subjects against the prompt's words only, ignoring end and padding tokens "
                              "(the authors use this for SD 2.1)."}),
        }}

    def build(self, tokens: SubjectTokens, step_size: float, guided_percent: float, refinement_percents: str,
              refinement_thresholds: str, max_refinement_steps: int, smoothing: bool, smoothing_sigma: float,
              normalize_eot: bool) -> tuple[GuidanceSpec]:
        schedule = build_schedule(self.DISPLAY_NAME, step_size, guided_percent, refinement_percents,
                                  refinement_thresholds, max_refinement_steps)
        if not tokens.subjects:
            raise NodeInputError(self.DISPLAY_NAME, "tokens", "no subjects; name them in the subjects input")
        config = AttendExciteConfig(smooth_attentions=smoothing, sigma=smoothing_sigma, normalize_eot=normalize_eot)
        return (attend_and_excite(tokens, schedule, config),)


class GuidedKSampler:
    DISPLAY_NAME = "Guided KSampler"
    DESCRIPTION = ("The KSampler with attention guidance: same inputs and results as the stock KSampler when the "
                   "guidance is off. Also outputs each subject's attention at every step.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("LATENT", ATTENTION_TYPE)
    RETURN_NAMES = ("latent", "attention")
    OUTPUT_TOOLTIPS = ("The denoised latent.",
                       "Each subject's attention map at every sampling step (for Visualize Attention).")
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        stock = comfy_nodes.KSampler.INPUT_TYPES()
        return {"required": {**stock["required"], "guidance": (GUIDANCE_TYPE, {"tooltip": GUIDANCE_TOOLTIP})}}

    def sample(self, model: Any, seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str,
               positive: list, negative: list, latent_image: dict, denoise: float, guidance: GuidanceSpec
               ) -> tuple[dict, Any]:
        try:
            latent, steps_maps = guided_ksample(model, seed, steps, cfg, sampler_name, scheduler, positive, negative,
                                                latent_image, denoise, guidance)
        except GuidanceUnavailableError as error:
            raise NodeInputError(self.DISPLAY_NAME, "sampler_name", str(error)) from error
        tokens = guidance.tokens
        return latent, subject_record(steps_maps, tokens.labels, tokens.subject_positions)


class GuidedSampler:
    DISPLAY_NAME = "Guided Sampler"
    DESCRIPTION = "A SAMPLER with attention guidance, for SamplerCustom and SamplerCustomAdvanced."
    CATEGORY = CATEGORY
    RETURN_TYPES = ("SAMPLER",)
    OUTPUT_TOOLTIPS = ("The chosen sampler, guided.",)
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "sampler_name": (comfy.samplers.SAMPLER_NAMES, {"tooltip": "The sampling algorithm to guide."}),
            "guidance": (GUIDANCE_TYPE, {"tooltip": GUIDANCE_TOOLTIP}),
        }}

    def build(self, sampler_name: str, guidance: GuidanceSpec) -> tuple[Any]:
        try:
            return (guided_sampler(sampler_name, guidance),)
        except GuidanceUnavailableError as error:
            raise NodeInputError(self.DISPLAY_NAME, "sampler_name", str(error)) from error


class ApplyGuidance:
    DISPLAY_NAME = "Apply Attention Guidance"
    DESCRIPTION = ("Makes the model sample with attention guidance in any sampler node, the stock KSampler "
                   "included (ComfyUI from December 2024 on). The input model is not changed.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("The model, guided whenever it is sampled.",)
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "model": ("MODEL", {"tooltip": "The model to guide."}),
            "guidance": (GUIDANCE_TYPE, {"tooltip": GUIDANCE_TOOLTIP}),
        }}

    def apply(self, model: Any, guidance: GuidanceSpec) -> tuple[Any]:
        try:
            return (with_guidance(model, guidance),)
        except GuidanceUnavailableError as error:
            raise NodeInputError(self.DISPLAY_NAME, "model", str(error)) from error


NODE_CLASS_MAPPINGS = {
    "AG_AttendAndExcite": AttendAndExcite,
    "AG_GuidedKSampler": GuidedKSampler,
    "AG_GuidedSampler": GuidedSampler,
    "AG_ApplyGuidance": ApplyGuidance,
}
NODE_DISPLAY_NAME_MAPPINGS = {node_id: cls.DISPLAY_NAME for node_id, cls in NODE_CLASS_MAPPINGS.items()}
