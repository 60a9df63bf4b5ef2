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
from .capture import attention_capture
from .compat import (
    NOT_DIFFERENTIABLE_FIX,
    blocks_modify_saved_activations,
    conditional_forward,
    entry_uuid,
    is_flow_model,
    is_not_differentiable,
    positive_conds,
)
from .conditioning import SubjectEntryError, entry_context, subject_entry
from .host_weights import entry_networks, make_autograd_ready
from .recorder import ForwardComplete, recording

logger = logging.getLogger("attention_guidance")

_OWN_SCHEDULE = "chooses its own steps, so guidance cannot follow its schedule"
_PREDICTOR_CORRECTOR = ("corrects each step from the latent it had before the model call (a predictor-corrector "
                        "method), so a guided update of the latent the model sees would not reach the next step")
_RESCALED_COPY = ("passes the model a rescaled copy of its latent and corrects each step from its own, so a guided "
                  "update would not reach the next step")
# Samplers guidance cannot steer, by their sampler function's name on either host: (name in the node, why).
_UNGUIDED_SAMPLERS = {
    "sample_dpm_fast": ("dpm_fast", _OWN_SCHEDULE),
    "dpm_fast_function": ("dpm_fast", _OWN_SCHEDULE),
    "sample_dpm_adaptive": ("dpm_adaptive", _OWN_SCHEDULE),
    "dpm_adaptive_function": ("dpm_adaptive", _OWN_SCHEDULE),
    "sample_unipc": ("uni_pc", _RESCALED_COPY),
    "sample_unipc_bh2": ("uni_pc_bh2", _RESCALED_COPY),
    "sample_sa_solver": ("sa_solver", _PREDICTOR_CORRECTOR),
    "sample_sa_solver_pece": ("sa_solver_pece", _PREDICTOR_CORRECTOR),
}
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


class SamplingRun:
    """One sampling run seen by the pack: its step clock, the recording of each step's maps (``history``, a list
    the caller owns) and the latent guidance (``spec``). Created by the sampler function, never shared.

    Both read the positive conditioning's subject entry (:func:`~.conditioning.subject_entry`), one row per image of
    ``latent`` ``[B, C, h, w]``: the guidance in a pass of its own, the recording in the sampling passes (or, where
    the host cannot tell entries apart in a batched call, in a pass of its own too). Where they read attention is
    the model's capture (:func:`~.capture.attention_capture`: UNet layers or transformer blocks).
    """

    def __init__(self, denoiser: Any, clock: StepClock, latent: torch.Tensor, extra_args: dict,
                 spec: GuidanceSpec | None, history: list[StepMaps] | None, early_stop: bool,
                 observer: GuidanceObserver | None) -> None:
        self.clock = clock
        self.history = history
        base_model = denoiser.inner_model.inner_model
        capture = attention_capture(base_model, latent, spec.tokens if spec else None,
                                    spec.dit_blocks if spec else None)
        positive = positive_conds(denoiser, extra_args)
        entry = subject_entry(positive, None if spec is None else spec.tokens, latent)
        token_count = entry_context(entry).shape[0]
        model_options = extra_args.get("model_options", {})
        self._base_model, self._entry, self._capture = base_model, entry, capture
        # the subject entry's ControlNets and GLIGEN take part in the subject pass, as in the sampling passes
        self._networks = [base_model.diffusion_model, *entry_networks(entry)]
        guiding = spec is not None and spec.active
        self._subject_store = AttentionStore(token_count, guidance_pass=True)
        plan = capture.guidance_plan(model_options, self._subject_store, spec if guiding else None)
        self._levels = plan.levels
        self._expected_rows_per_image = plan.calls_per_image if early_stop else None
        self._subject_options = plan.options
        self.sampling_store = AttentionStore(token_count)
        entry_id = entry_uuid(entry) if len(positive) > 1 else None
        self.records_in_own_pass = len(positive) > 1 and entry_id is None
        self.sampling_options = capture.recording_options(model_options, self.sampling_store,
                                                          None if entry_id is None else frozenset({entry_id}))
        self.guidance: GuidanceRun | None = None
        if guiding:
            self.guidance = GuidanceRun(spec, self.clock.steps, is_flow_model(base_model),
                                        observer or _LoggingObserver(),
                                        comfy.model_management.throw_exception_if_processing_interrupted,
                                        self.clock.sigmas, copy_saved_tensors=blocks_modify_saved_activations())

    def guidance_forward(self, sigma: torch.Tensor) -> Forward:
        """The subject pass at noise level ``sigma`` (``[1]``): the subject entry alone, stopped once every
        recorded layer has run."""
        store = self._subject_store

        def forward(x: torch.Tensor) -> dict[int, LevelMaps]:
            for network in self._networks:
                make_autograd_ready(network)
            store.clear()
            if self._expected_rows_per_image is not None:
                store.expected_rows = x.shape[0] * self._expected_rows_per_image
            with recording(store):
                try:
                    conditional_forward(self._base_model, [self._entry], x, sigma.expand(x.shape[0]),
                                        self._subject_options)
                except ForwardComplete:
                    pass
                except RuntimeError as error:
                    if is_not_differentiable(error):
                        raise RuntimeError(f"attention guidance: this ComfyUI's {NOT_DIFFERENTIABLE_FIX}") from error
                    raise
            require_maps(store, float(sigma[0]))
            return self._capture.level_maps(store, self._levels)

        return forward


def require_maps(store: AttentionStore, sigma: float) -> None:
    """Raise :class:`SubjectEntryError` when a model call recorded no latent/4 map: the subject entry did not run."""
    if GUIDANCE_LEVEL not in store.levels():
        raise SubjectEntryError(
            f"the positive entry encoded from the subject prompt took no part in the model call at noise level "
            f"{sigma:.4g} (a timestep range on it?); its attention can be read only on steps where it is active")


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
        if run.records_in_own_pass:
            maps = run.guidance_forward(sigma.flatten()[:1])(x)[GUIDANCE_LEVEL].maps.detach()
            run.history.append(StepMaps(step, sigma_value, maps))
            return self._inner(x, sigma, **kwargs)
        store = run.sampling_store
        store.clear()
        with recording(store):
            out = self._inner(x, sigma, **kwargs)
        require_maps(store, sigma_value)
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
    if spec is not None and spec.active and name in _UNGUIDED_SAMPLERS:
        sampler, reason = _UNGUIDED_SAMPLERS[name]
        raise GuidanceUnavailableError(f"the {sampler} sampler {reason}; pick another sampler (euler, dpmpp_2m, ...)")

    @functools.wraps(base_function)  # keeps the sampler's name, which others read (step_clock)
    def sample(model_k: Any, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
               callback: Callable | None = None, disable: bool | None = None, **options: Any) -> torch.Tensor:
        if (spec is None or not spec.active) and history is None:
            return base_function(model_k, x, sigmas, extra_args=extra_args, callback=callback, disable=disable,
                                 **options)
        extra_args = dict(extra_args or {})
        run = SamplingRun(model_k, step_clock(sigmas, base_function), x, extra_args, spec, history, early_stop,
                          observer)
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
