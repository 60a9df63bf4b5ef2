"""The only package that touches ComfyUI internals: layer discovery, the attention recorder, guided sampling runs,
their doors into the host's samplers, prompt tokens and the Attention Regulation patch.

Everything here works on the current ComfyUI and on the early-2024 one; where they differ, the difference is handled
here and named.
"""
from .doors import guided_ksample, ksampler_sigmas, with_guidance
from .recorder import STORE_KEY, RecorderPatch, recording, with_recorder
from .regulation import (REGULATION_RUN_KEY, RegulationEvent, RegulationPatch, RegulationRun, RegulationSpec,
                         regulation_sites, with_regulation)
from .sampling import GuidanceUnavailableError, StepMaps, guided_sampler, recording_sampler
from .sites import SUPPORTED_FAMILIES, UnsupportedModelError, attention_sites, conditional_rows, guidance_sites, host_attention
from .text import prompt_tokens

__all__ = [
    "REGULATION_RUN_KEY", "STORE_KEY", "SUPPORTED_FAMILIES", "GuidanceUnavailableError", "RecorderPatch",
    "RegulationEvent", "RegulationPatch", "RegulationRun", "RegulationSpec", "StepMaps", "UnsupportedModelError",
    "attention_sites", "conditional_rows", "guidance_sites", "guided_ksample", "guided_sampler", "host_attention",
    "ksampler_sigmas", "prompt_tokens", "recording", "recording_sampler", "regulation_sites", "with_guidance",
    "with_recorder", "with_regulation",
]
