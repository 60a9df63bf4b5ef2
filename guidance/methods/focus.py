"""FOCUS as a guidance term (docs/methods.md, "FOCUS"): each subject's tokens (its word pieces in every text encoder,
and its attributes) attend together, the subjects apart, on a diffusion transformer's exact joint-attention
probabilities (a UNet's cross-attention probabilities on SD1.x, SD2.x and SDXL)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..engine.schedule import AUTO, GuidanceSchedule
from ..engine.spec import GuidanceSpec, TermInputs
from ..losses.focus import FocusConfig, FocusResult, focus_loss
from ..subjects.tokens import SubjectTokenError, SubjectTokens

STEP_SIZE = 4.0  # λ of FOCUS's FLUX notebook
GUIDED_PERCENT = 50.0


def paper_schedule() -> GuidanceSchedule:
    """FOCUS's update: the SOC weight per step on flow models (``auto``), λ = 4, no refinement; the first half of
    the steps (FOCUS guides every step, but the SOC weights of the second half add up to about 2.5 % of the whole at 20-28 steps)."""
    return GuidanceSchedule(guided_percent=GUIDED_PERCENT, refinement_points=(), scale_factor=STEP_SIZE,
                            weighting=AUTO)


@dataclass(frozen=True)
class FocusTerm:
    """FOCUS's loss on the latent/4 maps; on diffusion transformers it reads the exact joint probabilities."""

    groups: tuple[tuple[int, ...], ...]
    config: FocusConfig = FocusConfig()
    weight: float = 1.0
    levels: ClassVar[tuple[int, ...]] = ()
    joint_attention: ClassVar[bool] = True

    def evaluate(self, inputs: TermInputs) -> FocusResult:
        maps = inputs.joint_maps if inputs.joint_maps is not None else inputs.maps
        return focus_loss(maps, self.groups, self.config)

    def unmet(self, result: Any, threshold: float) -> torch.Tensor:
        """FOCUS has no refinement criterion."""
        return torch.zeros_like(result.loss, dtype=torch.bool)


def subject_groups(tokens: SubjectTokens) -> tuple[tuple[int, ...], ...]:
    """Per subject, the positions of its word and of its attributes (in every encoder the model reads)."""
    return tuple(tuple(sorted({*subject.word.positions, *(p for attribute in subject.attributes
                                                           for p in attribute.positions)}))
                 for subject in tokens.subjects)


def focus(tokens: SubjectTokens, schedule: GuidanceSchedule, config: FocusConfig = FocusConfig(),
          weight: float = 1.0) -> GuidanceSpec:
    """A FOCUS guidance (the paper's update is :func:`paper_schedule`)."""
    if not tokens.subjects:
        raise SubjectTokenError("FOCUS needs at least one subject; name them in the subjects input")
    return GuidanceSpec(tokens, (FocusTerm(subject_groups(tokens), config, weight),), (schedule,))
