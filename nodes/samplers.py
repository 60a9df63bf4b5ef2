"""The three ways into the guided sampler: a KSampler, a SAMPLER, a MODEL patch for any sampler node."""
from __future__ import annotations

from typing import Any

import comfy.samplers

import nodes as comfy_nodes

from ..guidance.comfy_bridge import (
    GuidanceUnavailableError,
    PromptMismatchError,
    SubjectEntryError,
    UnsupportedModelError,
    check_guidance,
    guided_ksample,
    guided_sampler,
    with_guidance,
)
from ..guidance.engine.spec import GuidanceSpec
from ..guidance.inspection.history import subject_history
from .common import ATTENTION_TYPE, CATEGORY, GUIDANCE_TYPE, NodeInputError

GUIDANCE_TOOLTIP = "What to steer and when: from Attend-and-Excite (or another guidance node)."


def _check(node: str, model: Any, guidance: GuidanceSpec) -> None:
    """The model and guidance errors of a run, raised before sampling as the node's input errors."""
    try:
        check_guidance(model, guidance)
    except UnsupportedModelError as error:
        raise NodeInputError(node, "model", str(error)) from error
    except ValueError as error:
        raise NodeInputError(node, "guidance", str(error)) from error


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
        _check(self.DISPLAY_NAME, model, guidance)
        try:
            latent, steps_maps = guided_ksample(model, seed, steps, cfg, sampler_name, scheduler, positive, negative,
                                                latent_image, denoise, guidance)
        except GuidanceUnavailableError as error:
            raise NodeInputError(self.DISPLAY_NAME, "sampler_name", str(error)) from error
        except PromptMismatchError as error:
            raise NodeInputError(self.DISPLAY_NAME, "guidance", str(error)) from error
        except SubjectEntryError as error:
            raise NodeInputError(self.DISPLAY_NAME, "positive", str(error)) from error
        tokens = guidance.tokens
        return latent, subject_history(steps_maps, tokens.labels, tokens.subject_positions)


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
        _check(self.DISPLAY_NAME, model, guidance)
        try:
            return (with_guidance(model, guidance),)
        except GuidanceUnavailableError as error:
            raise NodeInputError(self.DISPLAY_NAME, "model", str(error)) from error


NODE_CLASS_MAPPINGS = {
    "AG_GuidedKSampler": GuidedKSampler,
    "AG_GuidedSampler": GuidedSampler,
    "AG_ApplyGuidance": ApplyGuidance,
}
NODE_DISPLAY_NAME_MAPPINGS = {node_id: cls.DISPLAY_NAME for node_id, cls in NODE_CLASS_MAPPINGS.items()}
