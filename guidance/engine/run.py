"""Latent guidance over one sampling run: which steps it guides and what it carries from one guided step to the
next (the previous step's maps, the saved-tensor guard). Pure core: the bridge supplies the forward pass."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .spec import GuidanceSpec
from .update import Forward, GuidanceObserver, SavedTensorGuard, StepContext, guide_latent


class GuidanceRun:
    """One sampling run's guidance: ``steps`` steps, a ``flow`` model or not (see
    :func:`~.update.latent_step_scale`), over the noise levels ``sigmas`` (which SOC step sizes follow); created per
    run, never shared. ``copy_saved_tensors``: the model is known to modify activations autograd saved (see
    :class:`~.update.SavedTensorGuard`)."""

    def __init__(self, spec: GuidanceSpec, steps: int, flow: bool, observer: GuidanceObserver | None = None,
                 check_interrupt: Callable[[], None] = lambda: None, sigmas: Sequence[float] | None = None,
                 copy_saved_tensors: bool = False) -> None:
        self.spec = spec if sigmas is None else spec.for_run(sigmas, flow)
        self.steps = steps
        self.flow = flow
        self.observer = observer or GuidanceObserver()
        self.check_interrupt = check_interrupt
        self.guard = SavedTensorGuard(copy_saved_tensors)
        self.guided_steps = 0
        self._previous: torch.Tensor | None = None  # the last guided step's step-start maps (A-STAR retention)

    def guides(self, step: int) -> bool:
        return self.spec.active and self.spec.guides(step, self.steps)

    def guide(self, x: torch.Tensor, step: int, sigma: float, forward: Forward) -> tuple[torch.Tensor, torch.Tensor]:
        """The guided latent at loop index ``step`` and the latent/4 maps ``[B, h, w, T]`` the loss saw first."""
        context = StepContext(step, self.steps, sigma, self._previous)
        guided, first, _ = guide_latent(x, self.spec, forward, context, self.flow, self.guard, self.observer,
                                        self.check_interrupt)
        self.guided_steps += 1
        self._previous = first.maps
        return guided, first.maps

    @property
    def missed_every_step(self) -> bool:
        """True when the schedule asked for guided steps and none ran (no model call matched a step start)."""
        return self.guided_steps == 0 and any(self.guides(step) for step in range(self.steps))
