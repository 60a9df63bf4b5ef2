"""Sampling helpers for host tests: the host's own conditioning, noise, schedules and ``sample_custom``."""
from __future__ import annotations

from typing import Any

import comfy.sample
import comfy.samplers
import torch

import nodes

# The current host guides through CFGGuider and sampler wrappers; the 2024 host has neither.
IS_CURRENT_HOST = hasattr(comfy.samplers, "CFGGuider")


def encode(clip: Any, text: str) -> list:
    return nodes.CLIPTextEncode().encode(clip, text)[0]


def sigmas(model: Any, scheduler: str, steps: int) -> torch.Tensor:
    if hasattr(comfy.samplers, "calculate_sigmas") and hasattr(model, "get_model_object"):
        return comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), scheduler, steps).cpu()
    return comfy.samplers.calculate_sigmas_scheduler(model.model, scheduler, steps).cpu()  # early-2024 host


def sample_custom(model: Any, clip: Any, sampler: Any, steps: int = 2, prompt: str = "a cat and a frog",
                  width: int = 256, height: int = 256, batch: int = 1, seed: int = 0, cfg: float = 7.0,
                  scheduler: str = "normal") -> torch.Tensor:
    """``SamplerCustom``'s path: the host's noise for ``seed``, the schedule, and ``comfy.sample.sample_custom``."""
    with torch.inference_mode():
        positive, negative = encode(clip, prompt), encode(clip, "")
        latent = nodes.EmptyLatentImage().generate(width, height, batch)[0]["samples"]
        if hasattr(comfy.sample, "fix_empty_latent_channels"):  # as SamplerCustom does (16 channels for DiTs)
            latent = comfy.sample.fix_empty_latent_channels(model, latent)
        noise = comfy.sample.prepare_noise(latent, seed)
        return comfy.sample.sample_custom(model, noise, cfg, sampler, sigmas(model, scheduler, steps), positive,
                                          negative, latent, seed=seed)


def ksampler_inputs(checkpoint: Any, prompt: str, sampler: str = "euler", scheduler: str = "normal", steps: int = 4,
                    batch: int = 1, seed: int = 3, size: int = 256) -> dict:
    """Keyword inputs of the stock KSampler (and of the Guided KSampler, which adds ``guidance``)."""
    with torch.inference_mode():
        positive, negative = encode(checkpoint.clip, prompt), encode(checkpoint.clip, "")
        latent = nodes.EmptyLatentImage().generate(size, size, batch)[0]
    return dict(seed=seed, steps=steps, cfg=7.0, sampler_name=sampler, scheduler=scheduler, positive=positive,
                negative=negative, latent_image=latent, denoise=1.0)


def stock_ksampler(model: Any, inputs: dict) -> torch.Tensor:
    with torch.inference_mode():
        return nodes.KSampler().sample(model, **inputs)[0]["samples"]


def guided_ksampler(model: Any, inputs: dict, spec: Any) -> tuple[torch.Tensor, Any]:
    """The Guided KSampler node: the sampled latent and its AG_ATTENTION."""
    with torch.inference_mode():
        latent, record = nodes.NODE_CLASS_MAPPINGS["AG_GuidedKSampler"]().sample(model, **inputs, guidance=spec)
    return latent["samples"], record


def recording_sampler(sampler_name: str, history: list) -> Any:
    """A SAMPLER that records each step's maps into ``history`` without changing the image."""
    from devkit.comfy_host import ag

    return ag("guidance.comfy_bridge.sampling").guided_sampler(sampler_name, None, history)


def with_recorder(model: Any) -> Any:
    """A clone of ``model`` whose latent/4 cross-attention layers carry a recorder patch for good (the pack installs
    them per sampling run), to test how it composes with other patches."""
    from devkit.comfy_host import ag

    recorder, sites = ag("guidance.comfy_bridge.recorder"), ag("guidance.comfy_bridge.sites")
    clone = model.clone()
    clone.model_options = recorder.options_with_recorder(clone.model_options, sites.guidance_sites(model))
    return clone
