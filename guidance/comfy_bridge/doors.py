"""The three ways into the guided sampler: a KSampler run, a SAMPLER, a MODEL patch for any sampler node."""
from __future__ import annotations

from typing import Any

import torch

import comfy.samplers

from ..spec import GuidanceSpec
from .sampling import GuidanceUnavailableError, StepMaps, guided_sampler, guided_sampler_function

GUIDANCE_WRAPPER_KEY = "attention_guidance"


def with_guidance(model: Any, spec: GuidanceSpec) -> Any:
    """A clone of ``model`` with which any sampler node (the stock KSampler too) samples with guidance.

    A SAMPLER_SAMPLE wrapper swaps the guided sampler function in for the one the node chose, for that call only.
    ComfyUI versions before December 2024 have no such wrapper.
    """
    try:
        from comfy.patcher_extension import WrappersMP
    except ImportError as error:
        raise GuidanceUnavailableError(
            "this ComfyUI version has no sampler wrappers, so a guided MODEL cannot steer the stock KSampler. Use "
            "'Guided KSampler' (AG_GuidedKSampler) or 'Guided Sampler' (AG_GuidedSampler) with SamplerCustom instead, "
            "or update ComfyUI."
        ) from error

    def sample_with_guidance(executor: Any, *args: Any, **kwargs: Any) -> Any:
        sampler = executor.class_obj
        original = sampler.sampler_function
        sampler.sampler_function = guided_sampler_function(original, spec, None)
        try:
            return executor(*args, **kwargs)
        finally:
            sampler.sampler_function = original

    clone = model.clone()
    clone.remove_wrappers_with_key(WrappersMP.SAMPLER_SAMPLE, GUIDANCE_WRAPPER_KEY)
    clone.add_wrapper_with_key(WrappersMP.SAMPLER_SAMPLE, GUIDANCE_WRAPPER_KEY, sample_with_guidance)
    return clone


def ksampler_sigmas(model: Any, steps: int, sampler_name: str, scheduler: str, denoise: float) -> torch.Tensor:
    """The schedule the stock KSampler uses for these settings (its own computation, on either host)."""
    target = model if hasattr(comfy.samplers, "CFGGuider") else model.model  # the 2024 KSampler takes the BaseModel
    return comfy.samplers.KSampler(target, steps=steps, device=model.load_device, sampler=sampler_name,
                                   scheduler=scheduler, denoise=denoise, model_options=model.model_options).sigmas


def guided_ksample(model: Any, seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str,
                   positive: list, negative: list, latent: dict, denoise: float, spec: GuidanceSpec
                   ) -> tuple[dict, list[StepMaps]]:
    """The stock KSampler's sampling (same noise, schedule, preview and progress) with the guided sampler."""
    import comfy.sample
    import comfy.utils
    import latent_preview

    latent_image = latent["samples"]
    if hasattr(comfy.sample, "fix_empty_latent_channels"):
        latent_image = comfy.sample.fix_empty_latent_channels(model, latent_image)
    noise = comfy.sample.prepare_noise(latent_image, seed, latent.get("batch_index"))
    sigmas = ksampler_sigmas(model, steps, sampler_name, scheduler, denoise)
    record: list[StepMaps] = []
    sampler = guided_sampler(sampler_name, spec, record)
    callback = latent_preview.prepare_callback(model, sigmas.shape[-1] - 1)
    samples = comfy.sample.sample_custom(model, noise, cfg, sampler, sigmas, positive, negative, latent_image,
                                         noise_mask=latent.get("noise_mask"), callback=callback,
                                         disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)
    return {**latent, "samples": samples}, record
