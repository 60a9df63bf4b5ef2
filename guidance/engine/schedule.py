"""When and how hard to guide: guided window, refinement points and step size (docs/methods.md, "Step size in ComfyUI's
sampler space" and "Guided window and refinement points").

Positions are percentages of the sampling steps, so one setting means the same at 20 or 50 steps.

Rounding rule: ``p`` percent of ``T`` steps is the step index ``floor(p·T/100 + 1/2)`` (nearest index, halves
round up). The guided window ``p`` covers the steps ``i < index(p)``; a refinement point ``p`` sits at step
``index(p)``. With the defaults at ``T = 50`` this is exactly the authors' A&E schedule: guided ``i < 25``,
refinement at ``i = 0, 10, 20``. At 20 steps: guided ``i < 10``, refinement at 0, 4, 8; at 30 steps: ``i < 15`` and
0, 6, 12.

Refinement runs only on guided steps: a point outside the window is ignored, so an empty window (0 %) leaves
sampling untouched. The authors refine at their points whatever the window; with their defaults every point lies
inside it, so the two agree. Should two points round to one step, the later point wins.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple

CONSTANT, SOC, AUTO = "constant", "soc", "auto"
WEIGHTINGS = (AUTO, SOC, CONSTANT)
SOC_EPSILON = 1e-3


class RefinementPoint(NamedTuple):
    """Refine at ``percent`` of the steps until the method's criterion meets ``threshold``, with at most
    ``max_steps`` updates (``None``: the schedule's ``max_refinement_steps``)."""

    percent: float
    threshold: float
    max_steps: int | None = None


@dataclass(frozen=True)
class GuidanceSchedule:
    """Guided window, refinement points and step size; defaults are Attend-and-Excite's (docs/methods.md,
    "A&E refinement and defaults").

    ``threshold`` means what the method's refinement criterion makes of it: for A&E the minimum per-subject
    maximum attention (refine while ``loss > max(0, 1 - threshold)``).
    """

    guided_percent: float = 50.0
    refinement_points: tuple[RefinementPoint, ...] = (
        RefinementPoint(0.0, 0.05),
        RefinementPoint(20.0, 0.5),
        RefinementPoint(40.0, 0.8),
    )
    max_refinement_steps: int = 20
    scale_factor: float = 20.0
    scale_range: tuple[float, float] = (1.0, 0.5)
    weighting: str = CONSTANT
    """``constant``: A&E's step size (:meth:`step_size`); ``soc``: FOCUS's stochastic-optimal-control weight of a flow
    model's step, ``scale_factor · (σ_i - σ_{i+1}) · 2σ_i(σ_i + ε) / (1 - σ_i + ε)``, ε = 1e-3 (needs the run's
    noise levels: :meth:`for_run`); ``auto``: ``soc`` on flow models, ``constant`` otherwise."""
    step_sizes: tuple[float, ...] | None = None  # one run's sizes per step, set by for_run

    def __post_init__(self) -> None:
        if not 0.0 <= self.guided_percent <= 100.0:
            raise ValueError(f"guided_percent must be within 0..100, got {self.guided_percent}")
        percents = [point.percent for point in self.refinement_points]
        if any(not 0.0 <= p <= 100.0 for p in percents) or percents != sorted(set(percents)):
            raise ValueError(f"refinement percents must be increasing and within 0..100, got {percents}")
        caps = [self.max_refinement_steps] + [p.max_steps for p in self.refinement_points if p.max_steps is not None]
        if min(caps) < 0:
            raise ValueError(f"refinement step caps must be >= 0, got {caps}")
        if self.scale_factor < 0 or min(self.scale_range) < 0:
            raise ValueError(f"step sizes must be >= 0, got {self.scale_factor} and {self.scale_range}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {', '.join(WEIGHTINGS)}, got {self.weighting!r}")

    def for_run(self, sigmas: Sequence[float], flow: bool) -> GuidanceSchedule:
        """This schedule for a run over the noise levels ``sigmas`` (``steps + 1``, last 0) of a flow model or not:
        with SOC weighting, its step sizes per step. Raises ValueError for SOC on a model that is not a flow."""
        if self.weighting == CONSTANT or (self.weighting == AUTO and not flow):
            return self
        if not flow:
            raise ValueError("the SOC step size follows a flow model's noise levels (FLUX, SD3); this model is not a "
                             "flow model: use the constant weighting")
        return replace(self, step_sizes=tuple(soc_step_size(self.scale_factor, sigmas[i], sigmas[i + 1])
                                              for i in range(len(sigmas) - 1)))

    def guided_steps(self, steps: int) -> int:
        """Number of leading guided steps of a ``steps``-step run."""
        return percent_to_step(self.guided_percent, steps)

    def is_guided(self, step: int, steps: int) -> bool:
        """Whether loop index ``step`` (0-based) of a ``steps``-step run gets a latent update."""
        _check_step(step, steps)
        return step < self.guided_steps(steps)

    def refinement_at(self, steps: int) -> dict[int, RefinementPoint]:
        """``{step index: point}`` of the refinement points that fall on guided steps."""
        window = self.guided_steps(steps)
        indexed = {percent_to_step(point.percent, steps): point for point in self.refinement_points}
        return {index: point for index, point in indexed.items() if index < window}

    def refinement_thresholds(self, steps: int) -> dict[int, float]:
        """``{step index: threshold}`` of the refinement points that fall on guided steps."""
        return {index: point.threshold for index, point in self.refinement_at(steps).items()}

    def refinement_threshold(self, step: int, steps: int) -> float | None:
        """The refinement threshold at loop index ``step``, or ``None`` where no refinement runs."""
        _check_step(step, steps)
        return self.refinement_thresholds(steps).get(step)

    def refinement_cap(self, step: int, steps: int) -> int:
        """Most refinement updates at loop index ``step``: its point's ``max_steps``, else ``max_refinement_steps``."""
        _check_step(step, steps)
        point = self.refinement_at(steps).get(step)
        return self.max_refinement_steps if point is None or point.max_steps is None else point.max_steps

    def step_size(self, step: int, steps: int) -> float:
        """``alpha_i = scale_factor · sqrt(linspace(start, end, T)[i])`` (§1.6), a function of the loop index only;
        with SOC weighting the run's own sizes (:meth:`for_run`)."""
        _check_step(step, steps)
        if self.step_sizes is not None:
            return self.step_sizes[step]
        start, end = self.scale_range
        fraction = step / (steps - 1) if steps > 1 else 0.0
        return self.scale_factor * math.sqrt(start + (end - start) * fraction)


def soc_step_size(scale: float, sigma: float, next_sigma: float, epsilon: float = SOC_EPSILON) -> float:
    """FOCUS's weight of the step ``sigma -> next_sigma`` as a pre-step latent update: its velocity perturbation
    ``λ · 2σ(σ + ε)/(1 - σ + ε) · ∇L`` times the Euler step ``σ - σ'`` (docs/methods.md, "FOCUS")."""
    return scale * (sigma - next_sigma) * 2 * sigma * (sigma + epsilon) / (1 - sigma + epsilon)


def percent_to_step(percent: float, steps: int) -> int:
    """Step index of ``percent`` % of a ``steps``-step run: ``floor(percent·steps/100 + 1/2)``."""
    if steps < 1:
        raise ValueError(f"a run needs at least one step, got {steps}")
    return math.floor(percent * steps / 100.0 + 0.5)


def _check_step(step: int, steps: int) -> None:
    if not 0 <= step < steps:
        raise ValueError(f"step {step} is outside a {steps}-step run")


class RefinementInputError(ValueError):
    """A refinement setting that cannot be read; ``setting`` is ``"percents"`` or ``"thresholds"``, the one at fault."""

    def __init__(self, message: str, setting: str) -> None:
        super().__init__(message)
        self.setting = setting


def parse_refinement(percents: str, thresholds: str) -> tuple[RefinementPoint, ...]:
    """``"0, 20, 40"`` and ``"0.05, 0.5, 0.8"`` -> refinement points; empty strings mean no refinement.

    Raises :class:`RefinementInputError` naming the setting at fault (a count mismatch is the thresholds'.)
    """
    def numbers(text: str, setting: str) -> list[float]:
        try:
            return [float(part) for part in text.replace(";", ",").split(",") if part.strip()]
        except ValueError as error:
            raise RefinementInputError(f"refinement {setting} must be comma-separated numbers, got {text!r}",
                                       setting) from error

    steps, targets = numbers(percents, "percents"), numbers(thresholds, "thresholds")
    if len(steps) != len(targets):
        raise RefinementInputError(f"{len(steps)} refinement percents but {len(targets)} thresholds; give one "
                                   "threshold per point", "thresholds")
    return tuple(RefinementPoint(p, t) for p, t in zip(steps, targets))
