"""The latent update: gradients of the guidance loss inside a host that samples under ``torch.inference_mode``.

Shapes: latents ``x`` are ``[B, C, h, w]``; losses are ``[B]`` (each image gets the gradient of its own loss).

The step is A&E's ``z <- z - alpha_i · dL/dz`` expressed in k-diffusion space, ``x <- x - alpha_i (1 + sigma^2) dL/dx``
(methods.md §1.7), with A&E's iterative refinement at refinement points (§1.6, trap T6): keep stepping while the
loss *before* the latest step missed the target, at most as often as the point's cap allows (its own
``max_steps`` or the schedule's ``max_refinement_steps``), then take the regular
step from the loss at the refined latent. Our loop reuses the step-start gradient for the first refinement step,
which the reference recomputes at the same latent (same numbers, one forward less).
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch

from .spec import GuidanceSpec

logger = logging.getLogger("attention_guidance")


@dataclass
class PassResult:
    """One guidance forward: per-term results, total loss ``[B]`` (detached), gradient ``[B, C, h, w]``, maps."""

    results: list[Any]
    loss: torch.Tensor
    grad: torch.Tensor
    maps: torch.Tensor  # [B, h, w, T], detached


@dataclass
class StepReport:
    step: int
    sigma: float
    losses: list[torch.Tensor] = field(default_factory=list)  # total loss of every pass of the step, [B] each
    refinement_steps: int = 0
    skipped_images: int = 0


def make_autograd_ready(module: torch.nn.Module) -> None:
    """Turn inference-tensor parameters and buffers into normal tensors with the same values.

    Hosts load checkpoints under ``inference_mode``, and autograd cannot save inference tensors for backward.
    Parameters that are normal tensors already (after the first call, or weights cast per call) stay as they are.
    """
    with torch.inference_mode(False), torch.no_grad():
        for submodule in module.modules():
            for name, parameter in submodule._parameters.items():
                if parameter is not None and parameter.is_inference():
                    submodule._parameters[name] = torch.nn.Parameter(parameter.clone(), requires_grad=False)
            for name, buffer in submodule._buffers.items():
                if buffer is not None and buffer.is_inference():
                    submodule._buffers[name] = buffer.clone()


@contextmanager
def saved_tensor_guard(enabled: bool) -> Iterator[None]:
    """Copy tensors autograd saves, for hosts whose forward modifies saved activations in place (``x += n``)."""
    hooks = torch.autograd.graph.saved_tensors_hooks(lambda t: t.clone() if t.requires_grad else t, lambda t: t)
    with hooks if enabled else nullcontext():
        yield


def latent_gradient(x: torch.Tensor, forward_and_loss: Callable[[torch.Tensor], tuple[list[Any], torch.Tensor, torch.Tensor]],
                    guard_saved_tensors: bool) -> PassResult:
    """Run ``forward_and_loss`` on a grad-enabled copy of ``x`` and differentiate the summed per-image loss."""
    with torch.inference_mode(False), torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        with saved_tensor_guard(guard_saved_tensors):
            results, loss, maps = forward_and_loss(xg)
        grad = torch.autograd.grad(loss.sum(), xg, allow_unused=True)[0] if loss.requires_grad else None
    if grad is None:
        grad = torch.zeros_like(xg)
    return PassResult(results, loss.detach(), grad.detach(), maps.detach())


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


def guide_latent(x: torch.Tensor, sigma: float, step: int, steps: int, spec: GuidanceSpec,
                 evaluate: Callable[[torch.Tensor], PassResult], check_interrupt: Callable[[], None]
                 ) -> tuple[torch.Tensor, PassResult, StepReport]:
    """The guided latent of loop index ``step``: refinement (at refinement points) and the regular step.

    Returns the new latent, the step-start pass (its maps are what the guidance saw) and a report.
    """
    report = StepReport(step, sigma)
    alpha = spec.step_size(step, steps) * (1.0 + sigma ** 2)
    batch = x.shape[0]
    first = result = evaluate(x)
    report.losses.append(result.loss)
    refinement = spec.refinement(step, steps)
    if refinement is not None:
        active = spec.unmet(result.results, refinement.thresholds)
        while active.any():
            check_interrupt()
            x = x - alpha * _finite_step(result.grad, result.loss, active, report)
            report.refinement_steps += 1
            still_unmet = spec.unmet(result.results, refinement.thresholds)  # judged on the loss before this step (T6)
            active = active & still_unmet & (report.refinement_steps < refinement.max_steps)
            result = evaluate(x)
            report.losses.append(result.loss)
    x = x - alpha * _finite_step(result.grad, result.loss, torch.ones(batch, dtype=torch.bool), report)
    return x, first, report
