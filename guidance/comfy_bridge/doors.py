"""The three ways into the guided sampler: a KSampler run, a SAMPLER, a MODEL patch for any sampler node."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import comfy.samplers
import torch

from ..engine.spec import GuidanceSpec
from ..engine.update import GuidanceObserver
from ..inspection.history import StepMaps
from .compat import HAS_MODEL_WRAPPERS, WrappersMP, empty_latent_channels, ksampler_model
from .sampling import GuidanceUnavailableError, guided_sampler, guided_sampler_function

GUIDANCE_WRAPPER_KEY = "attention_guidance"


@contextmanager
def sampler_function_replaced(sampler: Any, function: Callable) -> Iterator[None]:
    """The host's SAMPLER object runs ``function`` for the duration of the block, and its own function again after
    it, whatever happens inside (the object belongs to the sampler node and may be reused)."""
    original = sampler.sampler_function
    sampler.sampler_function = function
    try:
        yield
    finally:
        sampler.sampler_function = original


def with_guidance(model: Any, spec: GuidanceSpec) -> Any:
    """A clone of ``model`` with which any sampler node (the stock KSampler too) samples with guidance.

    A SAMPLER_SAMPLE wrapper swaps the guided sampler function in for the one the node chose, for that call only.
    ComfyUI versions before December 2024 have no such wrapper.
    """
    if not HAS_MODEL_WRAPPERS:
        raise GuidanceUnavailableError(
            "this ComfyUI version has no sampler wrappers, so a guided MODEL cannot steer the stock KSampler. Use "
            "'Guided KSampler' (AG_GuidedKSampler) or 'Guided Sampler' (AG_GuidedSampler) with SamplerCustom instead, "
            "or update ComfyUI."
        )

    def sample_with_guidance(executor: Any, *args: Any, **kwargs: Any) -> Any:
        sampler = executor.class_obj
        with sampler_function_replaced(sampler, guided_sampler_function(sampler.sampler_function, spec, None)):
            return executor(*args, **kwargs)

    clone = model.clone()
    clone.remove_wrappers_with_key(WrappersMP.SAMPLER_SAMPLE, GUIDANCE_WRAPPER_KEY)
    clone.add_wrapper_with_key(WrappersMP.SAMPLER_SAMPLE, GUIDANCE_WRAPPER_KEY, sample_with_guidance)
    return clone


def ksampler_sigmas(model: Any, steps: int, sampler_name: str, scheduler: str, denoise: float) -> torch.Tensor:
    """The schedule the stock KSampler uses for these settings (its own computation, on either host)."""
    return comfy.samplers.KSampler(ksampler_model(model), steps=steps, device=model.load_device, sampler=sampler_name,
                                   scheduler=scheduler, denoise=denoise, model_options=model.model_options).sigmas


def guided_ksample(model: Any, seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str,
                   positive: list, negative: list, latent: dict, denoise: float, spec: GuidanceSpec,
                   observer: GuidanceObserver | None = None, early_stop: bool = True) -> tuple[dict, list[StepMaps]]:
    """The stock KSampler's sampling (same noise, schedule, preview and progress) with the guided sampler; returns
    the latent and each step's maps. ``observer`` and ``early_stop`` as for :func:`guided_sampler`."""
    import comfy.sample
    import comfy.utils
    import latent_preview

    latent_image = empty_latent_channels(model, latent["samples"])
    noise = comfy.sample.prepare_noise(latent_image, seed, latent.get("batch_index"))
    sigmas = ksampler_sigmas(model, steps, sampler_name, scheduler, denoise)
    history: list[StepMaps] = []
    sampler = guided_sampler(sampler_name, spec, history, early_stop, observer)
    callback = latent_preview.prepare_callback(model, sigmas.shape[-1] - 1)
    samples = comfy.sample.sample_custom(model, noise, cfg, sampler, sigmas, positive, negative, latent_image,
                                         noise_mask=latent.get("noise_mask"), callback=callback,
                                         disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)
    return {**latent, "samples": samples}, history
