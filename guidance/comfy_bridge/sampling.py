"""Sampling runs: step detection, recording and guided latent updates inside any k-diffusion sampler."""
from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

import comfy.ldm.modules.attention as comfy_attention
import comfy.model_management
import comfy.samplers

from ..layers import GUIDANCE_LEVEL, sites_at_level
from ..spec import GuidanceSpec, LevelMaps, TermInputs
from ..store import AttentionStore
from ..update import PassResult, guide_latent, latent_gradient, make_autograd_ready
from .recorder import _ForwardComplete, options_with_recorder, options_with_store, positive_token_count, recording
from .sites import attention_sites, guidance_sites

logger = logging.getLogger("attention_guidance")

# Samplers whose corrector evaluates the model at the *next* schedule sigma after the step's callback: the first
# call at that sigma is the corrector's temporary tensor, the second one starts the next step.
_CORRECTOR_CALLS_AT_NEXT_SIGMA = {"sample_heun": 1, "sample_heunpp2": 1}
# Samplers that choose their own sigmas: no step of the schedule can be matched, so guidance cannot run.
_OWN_SCHEDULE_SAMPLERS = {"sample_dpm_fast", "sample_dpm_adaptive"}
# The 2024 host adds the transformer residual in place (``x += n``), which breaks autograd without a guard.
_NEEDS_SAVED_TENSOR_GUARD = "x += n" in inspect.getsource(comfy_attention.BasicTransformerBlock)


@dataclass
class StepMaps:
    """One sampling step's aggregated conditional maps, ``[B, h, w, T]`` at latent/4, detached.

    From the guidance pass on guided steps (what the loss saw), from the CFG pass's positive half otherwise.
    """

    step: int
    sigma: float
    maps: torch.Tensor
    guided: bool = False


class GuidanceUnavailableError(RuntimeError):
    pass


def _positive_conds(model_k: Any, extra_args: dict) -> list:
    guider = model_k.inner_model
    positive = guider.conds["positive"] if hasattr(guider, "conds") else extra_args["cond"]  # current / 2024 host
    # ControlNet models are loaded as inference tensors and cannot take part in a backward pass: the guidance
    # pass reads attention without them (the sampling passes still use them).
    return [{key: value for key, value in cond.items() if key != "control"} for cond in positive]


def _conditional_forward(base_model: Any, positive: list, x: torch.Tensor, sigma: torch.Tensor,
                         model_options: dict) -> None:
    timestep = sigma.expand(x.shape[0])
    try:
        if hasattr(comfy.samplers, "calc_cond_batch"):
            comfy.samplers.calc_cond_batch(base_model, [positive], x, timestep, model_options)
        else:  # 2024 host
            comfy.samplers.calc_cond_uncond_batch(base_model, positive, None, x, timestep, model_options)
    except _ForwardComplete:
        pass


class SamplingRun:
    """State of one sampling run: step counter, store, record. Created by the sampler function, never shared."""

    def __init__(self, model_k: Any, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict, spec: GuidanceSpec | None,
                 record: list[StepMaps] | None, base_name: str, early_stop: bool) -> None:
        self.model_k = model_k
        self.sigmas = sigmas.tolist()
        self.steps = len(self.sigmas) - 1
        self.spec = spec
        self.record = record
        self.step = 0
        self.step_open = True
        self._skip_at_next_sigma = 0
        self._corrector_calls = _CORRECTOR_CALLS_AT_NEXT_SIGMA.get(base_name, 0)
        self.guided_steps = 0
        self.previous_maps: torch.Tensor | None = None  # the last guided step's step-start maps, for TermInputs
        base_model = model_k.inner_model.inner_model
        sites = guidance_sites(base_model)
        token_count = positive_token_count(model_k, extra_args)
        model_options = extra_args.get("model_options", {})
        self.record_store = AttentionStore(token_count)
        self.sampling_options = options_with_store(options_with_recorder(model_options, sites), self.record_store)
        if spec is not None and spec.active:
            self._base_model = base_model
            self._positive = _positive_conds(model_k, extra_args)
            # The guidance pass records latent/4 and the extra levels the terms read; the sampling passes record
            # latent/4 only, for AG_ATTENTION.
            all_sites = attention_sites(base_model)
            self._extra_levels = [level for level in spec.levels
                                  if level != GUIDANCE_LEVEL and sites_at_level(all_sites, level)]
            guided_sites = sites + [site for level in self._extra_levels for site in sites_at_level(all_sites, level)]
            layer_calls = sum(site.depth for site in guided_sites)
            self._guidance_store = AttentionStore(token_count, guidance_pass=True,
                                                  expected_rows=x.shape[0] * layer_calls if early_stop else None)
            self._guidance_options = options_with_store(options_with_recorder(model_options, guided_sites),
                                                        self._guidance_store)

    def end_of_step(self) -> None:
        self.step += 1
        self.step_open = True
        self._skip_at_next_sigma = self._corrector_calls

    def is_step_start(self, sigma: float) -> bool:
        if not self.step_open or self.step >= self.steps or sigma != self.sigmas[self.step]:
            return False
        if self._skip_at_next_sigma:
            self._skip_at_next_sigma -= 1
            return False
        self.step_open = False
        return True

    def evaluate(self, sigma: torch.Tensor) -> Callable[[torch.Tensor], PassResult]:
        spec = self.spec

        def forward_and_loss(x: torch.Tensor) -> tuple[list[Any], torch.Tensor, torch.Tensor]:
            store = self._guidance_store
            store.clear()
            with recording(store):
                _conditional_forward(self._base_model, self._positive, x, sigma, self._guidance_options)
            maps = store.aggregate(GUIDANCE_LEVEL)
            level_maps = {level: LevelMaps(store.aggregate(level), store.head_count(level))
                          for level in self._extra_levels}
            inputs = TermInputs(maps, self.step, self.steps, self.previous_maps, level_maps)
            results = [term.evaluate(inputs) for term in spec.terms]
            return results, spec.total_loss(results, self.step, self.steps), maps

        def evaluate(x: torch.Tensor) -> PassResult:
            make_autograd_ready(self._base_model.diffusion_model)
            return latent_gradient(x, forward_and_loss, _NEEDS_SAVED_TENSOR_GUARD)

        return evaluate


class _StepDenoiser:
    """The sampler's denoiser, seen through a run: guides the latent (in place) at the start of guided steps and
    records each step's maps. Midpoint and corrector evaluations pass straight through."""

    def __init__(self, inner: Any, run: SamplingRun) -> None:
        self.inner_model = inner.inner_model
        self._inner = inner
        self._run = run

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        run = self._run
        sigma_value = float(sigma.flatten()[0])
        if not run.is_step_start(sigma_value):
            return self._inner(x, sigma, **kwargs)
        step = run.step
        if run.spec is not None and run.spec.guides(step, run.steps):
            guided, first, report = guide_latent(x, sigma_value, step, run.steps, run.spec,
                                                 run.evaluate(sigma.flatten()[:1]),
                                                 comfy.model_management.throw_exception_if_processing_interrupted)
            with torch.inference_mode():
                x.copy_(guided)
            run.guided_steps += 1
            run.previous_maps = first.maps
            logger.debug("attention guidance: step %d loss %s, %d refinement steps", step,
                         [round(v, 4) for v in report.losses[0].tolist()], report.refinement_steps)
            if run.record is not None:
                run.record.append(StepMaps(step, sigma_value, first.maps, guided=True))
            return self._inner(x, sigma, **kwargs)
        if run.record is None:
            return self._inner(x, sigma, **kwargs)
        store = run.record_store
        store.clear()
        with recording(store):
            out = self._inner(x, sigma, **kwargs)
        run.record.append(StepMaps(step, sigma_value, store.aggregate(GUIDANCE_LEVEL).detach()))
        store.clear()
        return out


def guided_sampler_function(base_function: Callable, spec: GuidanceSpec | None, record: list[StepMaps] | None,
                            early_stop: bool = True) -> Callable:
    """A k-diffusion sampler function that runs ``base_function`` with guidance and/or recording.

    Guidance (``spec``) updates the sampler's own latent at the start of each guided step; ``record`` (a list the
    caller owns) receives every step's maps. With neither, the base function runs untouched.
    """
    name = getattr(base_function, "__name__", "")
    if spec is not None and spec.active and name in _OWN_SCHEDULE_SAMPLERS:
        raise GuidanceUnavailableError(
            f"the {name.removeprefix('sample_')} sampler chooses its own steps, so guidance cannot follow its "
            f"schedule; pick another sampler (euler, dpmpp_2m, ...)"
        )

    def sample(model_k: Any, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
               callback: Callable | None = None, disable: bool | None = None, **options: Any) -> torch.Tensor:
        if (spec is None or not spec.active) and record is None:
            return base_function(model_k, x, sigmas, extra_args=extra_args, callback=callback, disable=disable,
                                 **options)
        extra_args = dict(extra_args or {})
        run = SamplingRun(model_k, x, sigmas, extra_args, spec, record, name, early_stop)
        extra_args["model_options"] = run.sampling_options
        if record is not None:
            record.clear()

        def step_callback(info: dict) -> None:
            run.end_of_step()
            if callback is not None:
                callback(info)

        out = base_function(_StepDenoiser(model_k, run), x, sigmas, extra_args=extra_args, callback=step_callback,
                            disable=disable, **options)
        if spec is not None and spec.active and run.guided_steps == 0 and any(
                spec.guides(step, run.steps) for step in range(run.steps)):
            logger.warning("attention guidance: no sampling step matched the schedule (sampler %s); the image is "
                           "unguided", name)
        return out

    return sample


def guided_sampler(sampler_name: str, spec: GuidanceSpec | None, record: list[StepMaps] | None = None,
                   early_stop: bool = True) -> Any:
    """A SAMPLER (for SamplerCustom and friends) running ``sampler_name`` with guidance and/or recording."""
    base = comfy.samplers.sampler_object(sampler_name)
    if not hasattr(base, "sampler_function"):
        raise GuidanceUnavailableError(f"the {sampler_name} sampler of this ComfyUI version cannot be guided; "
                                       f"pick a k-diffusion sampler (euler, dpmpp_2m, ...)")
    function = guided_sampler_function(base.sampler_function, spec, record, early_stop)
    return comfy.samplers.KSAMPLER(function, extra_options=base.extra_options, inpaint_options=base.inpaint_options)


def recording_sampler(sampler_name: str, record: list[StepMaps]) -> Any:
    """A SAMPLER that records each step's maps into ``record`` without changing the image."""
    return guided_sampler(sampler_name, None, record)
