"""Sampling runs: step starts, recording and guided latent updates inside any k-diffusion sampler."""
from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import comfy.model_management
import comfy.samplers
import torch

from ..capture.sites import GUIDANCE_LEVEL
from ..capture.store import AttentionStore
from ..engine.run import GuidanceRun
from ..engine.spec import GuidanceSpec, LevelMaps
from ..engine.steps import StepClock
from ..engine.update import Forward, GuidanceObserver, StepReport
from ..inspection.history import StepMaps
from .compat import conditional_forward, is_flow_model, positive_conds
from .host_weights import make_autograd_ready
from .capture import attention_capture
from .recorder import ForwardComplete, recording

logger = logging.getLogger("attention_guidance")

# Samplers that choose their own sigmas: no step of the schedule can be matched, so guidance cannot run.
_OWN_SCHEDULE_SAMPLERS = {"sample_dpm_fast", "sample_dpm_adaptive"}
# Samplers whose corrector evaluates the model at the next step's noise level after reporting the step.
_CORRECTOR_CALLS = {"sample_heun": 1, "sample_heunpp2": 1}


def step_clock(sigmas: torch.Tensor, sampler_function: Callable | None) -> StepClock:
    """The step clock of a run of ``sampler_function`` (a k-diffusion sampler function) over ``sigmas``."""
    return StepClock(sigmas.tolist(), _CORRECTOR_CALLS.get(getattr(sampler_function, "__name__", ""), 0))


class GuidanceUnavailableError(RuntimeError):
    pass


class _LoggingObserver(GuidanceObserver):
    def step_finished(self, report: StepReport) -> None:
        logger.debug("attention guidance: step %d loss %s, %d refinement steps", report.step,
                     [round(v, 4) for v in report.losses[0].tolist()], report.refinement_steps)


def _guidance_conds(denoiser: Any, extra_args: dict) -> list:
    # ControlNet models are loaded as inference tensors and cannot take part in a backward pass: the guidance
    # pass reads attention without them (the sampling passes still use them).
    return [{key: value for key, value in cond.items() if key != "control"}
            for cond in positive_conds(denoiser, extra_args)]


class SamplingRun:
    """One sampling run seen by the pack: its step clock, the recording of each step's maps (``history``, a list
    the caller owns) and the latent guidance (``spec``). Created by the sampler function, never shared."""

    def __init__(self, denoiser: Any, clock: StepClock, extra_args: dict, spec: GuidanceSpec | None,
                 history: list[StepMaps] | None, early_stop: bool, observer: GuidanceObserver | None,
                 latent: torch.Tensor) -> None:
        self.clock = clock
        self.history = history
        base_model = denoiser.inner_model.inner_model
        capture = attention_capture(base_model, latent, spec.tokens if spec else None,
                                    spec.dit_blocks if spec else None)
        positive = _guidance_conds(denoiser, extra_args)
        token_count = positive[0]["model_conds"]["c_crossattn"].cond.shape[1]
        model_options = extra_args.get("model_options", {})
        self.sampling_store = AttentionStore(token_count)
        self.sampling_options = capture.recording_options(model_options, self.sampling_store)
        self.guidance: GuidanceRun | None = None
        if spec is None or not spec.active:
            return
        self.guidance = GuidanceRun(spec, self.clock.steps, is_flow_model(base_model), observer or _LoggingObserver(),
                                    comfy.model_management.throw_exception_if_processing_interrupted,
                                    self.clock.sigmas)
        self._base_model, self._positive, self._capture = base_model, positive, capture
        self._guidance_store = AttentionStore(token_count, guidance_pass=True, expected_rows=None)
        plan = capture.guidance_plan(model_options, self._guidance_store, spec)
        self._levels = plan.levels
        self._expected_rows_per_image = plan.calls_per_image if early_stop else None
        self._guidance_options = plan.options

    def guidance_forward(self, sigma: torch.Tensor) -> Forward:
        """The guidance pass at noise level ``sigma`` (``[1]``): the positive prompt alone, stopped once every
        recorded layer has run."""
        store = self._guidance_store

        def forward(x: torch.Tensor) -> dict[int, LevelMaps]:
            make_autograd_ready(self._base_model.diffusion_model)
            store.clear()
            if self._expected_rows_per_image is not None:
                store.expected_rows = x.shape[0] * self._expected_rows_per_image
            with recording(store):
                try:
                    conditional_forward(self._base_model, self._positive, x, sigma.expand(x.shape[0]),
                                        self._guidance_options)
                except ForwardComplete:
                    pass
            return self._capture.level_maps(store, self._levels)

        return forward


class _StepDenoiser:
    """The sampler's denoiser, seen through a run: guides the latent (in place) at the start of guided steps and
    records each step's maps. Other evaluations of a step pass straight through."""

    def __init__(self, inner: Any, run: SamplingRun) -> None:
        self.inner_model = inner.inner_model
        self._inner = inner
        self._run = run

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        run = self._run
        sigma_value = float(sigma.flatten()[0])
        if not run.clock.starts_step(sigma_value):
            return self._inner(x, sigma, **kwargs)
        step = run.clock.step
        if run.guidance is not None and run.guidance.guides(step):
            guided, maps = run.guidance.guide(x, step, sigma_value, run.guidance_forward(sigma.flatten()[:1]))
            with torch.inference_mode():
                x.copy_(guided)
            if run.history is not None:
                run.history.append(StepMaps(step, sigma_value, maps, guided=True))
            return self._inner(x, sigma, **kwargs)
        if run.history is None:
            return self._inner(x, sigma, **kwargs)
        store = run.sampling_store
        store.clear()
        with recording(store):
            out = self._inner(x, sigma, **kwargs)
        run.history.append(StepMaps(step, sigma_value, store.aggregate(GUIDANCE_LEVEL).detach()))
        store.clear()
        return out


def guided_sampler_function(base_function: Callable, spec: GuidanceSpec | None, history: list[StepMaps] | None,
                            early_stop: bool = True, observer: GuidanceObserver | None = None) -> Callable:
    """A k-diffusion sampler function that runs ``base_function`` with guidance and/or recording.

    Guidance (``spec``) updates the sampler's own latent at the start of each guided step; ``history`` (a list the
    caller owns) receives every step's maps. With neither, the base function runs untouched. ``early_stop=False``
    runs the whole model in guidance passes (for measuring what the early stop saves); ``observer`` sees every
    guidance pass and step.
    """
    name = getattr(base_function, "__name__", "")
    if spec is not None and spec.active and name in _OWN_SCHEDULE_SAMPLERS:
        raise GuidanceUnavailableError(
            f"the {name.removeprefix('sample_')} sampler chooses its own steps, so guidance cannot follow its "
            f"schedule; pick another sampler (euler, dpmpp_2m, ...)"
        )

    @functools.wraps(base_function)  # keeps the sampler's name, which others read (step_clock)
    def sample(model_k: Any, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
               callback: Callable | None = None, disable: bool | None = None, **options: Any) -> torch.Tensor:
        if (spec is None or not spec.active) and history is None:
            return base_function(model_k, x, sigmas, extra_args=extra_args, callback=callback, disable=disable,
                                 **options)
        extra_args = dict(extra_args or {})
        run = SamplingRun(model_k, step_clock(sigmas, base_function), extra_args, spec, history, early_stop, observer, x)
        extra_args["model_options"] = run.sampling_options
        if history is not None:
            history.clear()

        def step_callback(info: dict) -> None:
            run.clock.finish_step()
            if callback is not None:
                callback(info)

        out = base_function(_StepDenoiser(model_k, run), x, sigmas, extra_args=extra_args, callback=step_callback,
                            disable=disable, **options)
        if run.guidance is not None and run.guidance.missed_every_step:
            logger.warning("attention guidance: no sampling step matched the schedule (sampler %s); the image is "
                           "unguided", name)
        return out

    return sample


def guided_sampler(sampler_name: str, spec: GuidanceSpec | None, history: list[StepMaps] | None = None,
                   early_stop: bool = True, observer: GuidanceObserver | None = None) -> Any:
    """A SAMPLER (for SamplerCustom and friends) running ``sampler_name`` with guidance and/or recording."""
    base = comfy.samplers.sampler_object(sampler_name)
    if not hasattr(base, "sampler_function"):
        raise GuidanceUnavailableError(f"the {sampler_name} sampler of this ComfyUI version cannot be guided; "
                                       f"pick a k-diffusion sampler (euler, dpmpp_2m, ...)")
    function = guided_sampler_function(base.sampler_function, spec, history, early_stop, observer)
    return comfy.samplers.KSAMPLER(function, extra_options=base.extra_options, inpaint_options=base.inpaint_options)
