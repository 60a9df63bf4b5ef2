"""The latent update: gradients of the guidance loss inside a host that samples under ``torch.inference_mode``.

Shapes: latents ``x`` are ``[B, C, h, w]``; losses are ``[B]`` (each image gets the gradient of its own loss).

The step is A&E's ``z <- z - alpha_i · dL/dz`` in the sampler's space (:func:`latent_step_scale`), with A&E's
iterative refinement at refinement points (docs/methods.md, "Iterative refinement"): keep stepping while the loss
*before* the latest step missed the target, each refining term at most its cap of updates, then take the regular
step from the loss at the refined latent. The loop reuses the step-start gradient for the first refinement step,
which the authors' code recomputes at the same latent (same numbers, one forward less).
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch

from ..capture.sites import GUIDANCE_LEVEL
from .spec import GuidanceSpec, LevelMaps, TermInputs

logger = logging.getLogger("attention_guidance")

Forward = Callable[[torch.Tensor], Mapping[int, LevelMaps]]
"""A guidance forward: the latent (a grad-enabled copy) -> the attention it produced per level (down-sampling factor),
carrying the latent's gradient. ``GUIDANCE_LEVEL`` (latent/4) is always present, other levels when asked for."""


@dataclass
class GuidancePass:
    """One guidance forward: per-term results, total loss ``[B]`` (detached), gradient ``[B, C, h, w]``, and the
    latent/4 maps ``[B, h, w, T]`` the loss saw (detached)."""

    results: list[Any]
    loss: torch.Tensor
    grad: torch.Tensor
    maps: torch.Tensor


@dataclass
class StepReport:
    step: int
    sigma: float
    losses: list[torch.Tensor] = field(default_factory=list)  # total loss of every pass of the step, [B] each
    refinement_steps: int = 0
    skipped_images: int = 0


@dataclass(frozen=True)
class StepContext:
    """Where a guided step sits: loop index ``step`` of a ``steps``-step run at noise level ``sigma``, and the
    latent/4 maps of the run's previous guided step (``previous``, detached; None at the first one)."""

    step: int
    steps: int
    sigma: float
    previous: torch.Tensor | None = None


class GuidanceObserver:
    """Receives what the engine does, pass by pass and step by step (the default does nothing)."""

    def pass_started(self, context: StepContext) -> None:
        pass

    def pass_finished(self, context: StepContext, guidance_pass: GuidancePass) -> None:
        pass

    def step_finished(self, report: StepReport) -> None:
        pass


class SavedTensorGuard:
    """Whether autograd's saved tensors are copied during guidance passes.

    Some model code adds into activations that autograd saved (the 2024 ComfyUI's ``x += n`` in its transformer
    blocks), which makes a plain backward fail. The bridge turns the guard on where it knows the host does this; for
    anything else (another pack's patch) the first such failure turns it on for the rest of the run, at the cost of
    one repeated pass. Models without in-place additions never pay for the copies.
    """

    def __init__(self, enabled: bool = False) -> None:
        self.enabled = enabled

    @contextmanager
    def applied(self) -> Iterator[None]:
        hooks = torch.autograd.graph.saved_tensors_hooks(lambda t: t.clone() if t.requires_grad else t, lambda t: t)
        with hooks if self.enabled else nullcontext():
            yield


def _modified_in_place(error: RuntimeError) -> bool:
    return "modified by an inplace operation" in str(error)


def latent_step_scale(sigma: float, flow: bool) -> float:
    """Factor between A&E's step on ``z`` and the step on the sampler's ``x``.

    Noise-prediction models (EPS, V) see ``x / sqrt(1 + sigma²)``: the same move of the model input needs
    ``(1 + sigma²)`` times the step on ``x``. Flow models (ComfyUI's CONST sampling) take ``x`` itself as input: 1.
    """
    return 1.0 if flow else 1.0 + sigma ** 2


def guidance_pass(x: torch.Tensor, spec: GuidanceSpec, forward: Forward, context: StepContext,
                  guard: SavedTensorGuard) -> GuidancePass:
    """Run ``forward`` on a grad-enabled copy of ``x``, evaluate the spec's terms and differentiate the summed
    per-image loss with respect to ``x``."""
    with torch.inference_mode(False), torch.enable_grad():
        while True:
            xg = x.detach().clone().requires_grad_(True)
            with guard.applied():
                levels = forward(xg)
                maps = levels[GUIDANCE_LEVEL].maps
                extra = {level: level_maps for level, level_maps in levels.items() if level != GUIDANCE_LEVEL}
                results, loss = spec.evaluate(TermInputs(maps, context.step, context.steps, context.previous, extra,
                                                         levels[GUIDANCE_LEVEL].joint))
            if loss.shape != (x.shape[0],):
                raise ValueError(f"the guidance loss has shape {tuple(loss.shape)} for a latent batch of "
                                 f"{x.shape[0]}: one loss per image is needed")
            try:
                grad = torch.autograd.grad(loss.sum(), xg, allow_unused=True)[0] if loss.requires_grad else None
                break
            except RuntimeError as error:
                if guard.enabled or not _modified_in_place(error):
                    raise
                guard.enabled = True
    if grad is None:
        grad = torch.zeros_like(xg)
    return GuidancePass(results, loss.detach(), grad.detach(), maps.detach())


def _finite_step(grad: torch.Tensor, loss: torch.Tensor, scale: torch.Tensor, report: StepReport) -> torch.Tensor:
    """``scale · grad`` per image, with images whose loss or gradient is not finite left out (and logged)."""
    finite = torch.isfinite(loss) & torch.isfinite(grad).flatten(1).all(dim=1)
    if not finite.all():
        bad = int((~finite).sum())
        report.skipped_images += bad
        logger.warning("attention guidance: step %d: non-finite loss or gradient for %d image(s); their update "
                       "is skipped", report.step, bad)
    keep = (finite.to(grad.dtype) * scale.to(grad.dtype)).view(-1, *[1] * (grad.ndim - 1))
    return torch.where(keep != 0, grad, torch.zeros_like(grad)) * keep


def guide_latent(x: torch.Tensor, spec: GuidanceSpec, forward: Forward, context: StepContext, flow: bool,
                 guard: SavedTensorGuard, observer: GuidanceObserver,
                 check_interrupt: Callable[[], None]) -> tuple[torch.Tensor, GuidancePass, StepReport]:
    """The guided latent at ``context.step``: refinement (at refinement points) and the regular step.

    Returns the new latent, the step-start pass (its maps are what the guidance saw) and the step's report.
    """
    report = StepReport(context.step, context.sigma)
    alpha = spec.step_size(context.step, context.steps) * latent_step_scale(context.sigma, flow)

    def evaluate(latent: torch.Tensor) -> GuidancePass:
        observer.pass_started(context)
        result = guidance_pass(latent, spec, forward, context, guard)
        report.losses.append(result.loss)
        observer.pass_finished(context, result)
        return result

    first = result = evaluate(x)
    refinement = spec.refinement(context.step, context.steps)
    if refinement is not None:
        active = spec.unmet(result.results, refinement, 0)
        while active.any():
            check_interrupt()
            x = x - alpha * _finite_step(result.grad, result.loss, active, report)
            report.refinement_steps += 1
            # judged on the loss before this update, as the authors' loop does
            active = active & spec.unmet(result.results, refinement, report.refinement_steps)
            result = evaluate(x)
    x = x - alpha * _finite_step(result.grad, result.loss, torch.ones(x.shape[0], dtype=torch.bool), report)
    observer.step_finished(report)
    return x, first, report
