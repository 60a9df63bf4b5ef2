"""The inputs every latent-guidance method shares (step size, guided window, refinement) and their schedule."""
from __future__ import annotations

from ..guidance.engine.schedule import GuidanceSchedule, RefinementInputError, parse_refinement
from .common import NodeInputError


def schedule_inputs(defaults: GuidanceSchedule, target: str | None = None, thresholds: str | None = None) -> dict:
    """Inputs shared by every latent-guidance method: step size, guided window, refinement.

    ``defaults`` are the method's paper values (shown in the tooltips); ``target`` says what a threshold means and
    its paper values (default: A&E's); ``thresholds`` replaces the default thresholds text (e.g. ``"auto"``).
    """
    percents = ", ".join(f"{p.percent:g}" for p in defaults.refinement_points)
    paper_thresholds = ", ".join(f"{p.threshold:g}" for p in defaults.refinement_points)
    target = target or f"the attention every subject should reach (paper: {paper_thresholds})"
    return {
        "step_size": ("FLOAT", {"default": defaults.scale_factor, "min": 0.0, "max": 1000.0, "step": 0.5, "tooltip":
                      "How far each update moves the latent (the papers' scale factor; it decays to "
                      "sqrt(0.5) of this over the run). 0 turns guidance off. Paper default: 20."}),
        "guided_percent": ("FLOAT", {"default": defaults.guided_percent, "min": 0.0, "max": 100.0, "step": 1.0,
                           "tooltip": "Guide the first this-many percent of the sampling steps (50 = the paper's "
                           "first 25 of 50 steps). 0 turns guidance off."}),
        "refinement_percents": ("STRING", {"default": percents, "tooltip":
                                "Where to refine, in percent of the steps (paper: steps 0, 10, 20 of 50 = 0, 20, 40). "
                                "At these steps the latent is updated repeatedly until the target is met. Empty: "
                                "no refinement (fastest)."}),
        "refinement_thresholds": ("STRING", {"default": thresholds or paper_thresholds, "tooltip":
                                  f"One target per refinement point: {target}."}),
        "max_refinement_steps": ("INT", {"default": defaults.max_refinement_steps, "min": 0, "max": 100, "tooltip":
                                 f"Most updates per refinement point (paper: {defaults.max_refinement_steps}); 0: no "
                                 f"refinement. Each costs a forward and backward pass of the UNet."}),
    }


def build_schedule(node: str, step_size: float, guided_percent: float, refinement_percents: str,
                   refinement_thresholds: str, max_refinement_steps: int,
                   first_step_max_refinement_steps: int | None = None) -> GuidanceSchedule:
    """The schedule of the shared inputs; ``first_step_max_refinement_steps`` caps a refinement point at 0 %."""
    try:
        points = parse_refinement(refinement_percents, refinement_thresholds)
        if first_step_max_refinement_steps is not None:
            points = tuple(point._replace(max_steps=first_step_max_refinement_steps) if point.percent == 0.0
                           else point for point in points)
        return GuidanceSchedule(guided_percent=guided_percent, refinement_points=points,
                                max_refinement_steps=max_refinement_steps, scale_factor=step_size)
    except RefinementInputError as error:
        raise NodeInputError(node, f"refinement_{error.setting}", str(error)) from error
    except ValueError as error:  # the points' order and range
        raise NodeInputError(node, "refinement_percents", str(error)) from error
