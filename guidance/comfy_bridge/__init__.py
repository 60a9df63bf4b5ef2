"""The only package that touches ComfyUI internals: layer discovery, the attention recorder, guided sampling runs,
their doors into the host's samplers, prompt tokens and the Attention Regulation patch.

Everything here works on the current ComfyUI and on the early-2024 one; where they differ, ``compat`` says how.
"""
from .capture import check_guidance
from .conditioning import PromptMismatchError, SubjectEntryError
from .doors import guided_ksample, ksampler_sigmas, with_guidance
from .regulation import RegulationPatch, regulation_sites, with_regulation
from .sampling import GuidanceUnavailableError, guided_sampler
from .sites import SUPPORTED_FAMILIES, UnsupportedModelError, attention_sites, guidance_sites
from .text import prompt_tokens

__all__ = [
    "SUPPORTED_FAMILIES", "GuidanceUnavailableError", "PromptMismatchError", "RegulationPatch", "SubjectEntryError",
    "UnsupportedModelError", "attention_sites", "check_guidance", "guidance_sites", "guided_ksample", "guided_sampler",
    "ksampler_sigmas", "prompt_tokens", "regulation_sites", "with_guidance", "with_regulation",
]
