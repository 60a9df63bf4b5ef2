"""Divide & Bind as a guidance term: attendance (TV) and binding (JSD) on the engine's attention (docs/methods.md,
"Divide & Bind")."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..engine.schedule import GuidanceSchedule, RefinementPoint
from ..engine.spec import GuidanceSpec, TermInputs
from ..losses.divide_bind import (
    DivideBindConfig,
    DivideBindResult,
    aggregate_attribute_maps,
    divide_bind_loss,
    needs_refinement,
)
from ..subjects.tokens import SubjectTokenError, SubjectTokens

# The authors' refinement at loop indices 0 / 10 / 20 of 50 steps, as percentages of the run: refine while the
# mode's indicator (tv modes: minimum TV; max mode: minimum maximum attention) is below the threshold.
TV_REFINEMENT = (RefinementPoint(0.0, 0.05), RefinementPoint(20.0, 0.2), RefinementPoint(40.0, 0.3))
MAX_REFINEMENT = (RefinementPoint(0.0, 0.05), RefinementPoint(20.0, 0.5), RefinementPoint(40.0, 0.8))
MAX_REFINEMENT_STEPS = 50
FIRST_STEP_MAX_REFINEMENT_STEPS = 100  # at loop index 0, where the latent is furthest from any target


def paper_schedule(mode: str) -> GuidanceSchedule:
    """The authors' schedule for ``mode``: A&E's guided window and step size, the mode's refinement thresholds, at
    most 100 updates at the first step and 50 at the others."""
    points = MAX_REFINEMENT if mode == "max" else TV_REFINEMENT
    points = tuple(point._replace(max_steps=FIRST_STEP_MAX_REFINEMENT_STEPS) if point.percent == 0.0 else point
                   for point in points)
    return GuidanceSchedule(refinement_points=points, max_refinement_steps=MAX_REFINEMENT_STEPS)


@dataclass(frozen=True)
class DivideBindTerm:
    """D&B's loss on the latent/4 maps; in ``tv_bind`` mode with attributes, the attribute maps come from the
    ``config.attribute_layer_divisors`` levels (latent/1 and latent/2), resampled onto the latent/4 grid.

    ``attributes``: per subject, the token positions of each of its attributes (empty: none).
    Refinement: refine while ``min_j TV_j`` (``max`` mode: ``min_j max Â_j``) is below the threshold (§3.5).
    """

    subjects: tuple[tuple[int, ...], ...]
    attributes: tuple[tuple[tuple[int, ...], ...], ...]
    config: DivideBindConfig = DivideBindConfig()
    weight: float = 1.0
    columns: tuple[int, ...] | None = None  # re-softmax columns (None: each CLIP chunk's [1:-1])

    @property
    def binds(self) -> bool:
        return self.config.mode == "tv_bind" and any(self.attributes)

    @property
    def levels(self) -> tuple[int, ...]:
        return self.config.attribute_layer_divisors if self.binds else ()

    def evaluate(self, inputs: TermInputs) -> DivideBindResult:
        attribute_maps = self._attribute_maps(inputs) if self.binds else None
        columns = None if self.columns is None else torch.tensor(self.columns)
        return divide_bind_loss(inputs.maps, self.subjects, inputs.step, inputs.steps, self.config, self.attributes,
                                attribute_maps, columns)

    def unmet(self, result: DivideBindResult, threshold: float) -> torch.Tensor:
        return needs_refinement(result.indicator, threshold)

    def _attribute_maps(self, inputs: TermInputs) -> torch.Tensor:
        """``[B, H, W, T]`` on the latent/4 grid from the attribute levels this model has."""
        present = [inputs.level_maps[level] for level in self.levels if level in inputs.level_maps]
        if not present:
            raise ValueError(f"Divide & Bind binding reads attribute maps at latent/{self.levels}, and this model "
                             f"has no cross-attention at those levels")
        return aggregate_attribute_maps([level.maps for level in present], [level.heads for level in present],
                                        tuple(inputs.maps.shape[1:3]))


def divide_bind(tokens: SubjectTokens, schedule: GuidanceSchedule, config: DivideBindConfig = DivideBindConfig(),
                weight: float = 1.0) -> GuidanceSpec:
    """A Divide & Bind spec: subjects and their attributes from ``tokens`` (the ``subjects`` phrase syntax).

    Raises :class:`SubjectTokenError` in ``tv_bind`` mode without any attribute to bind (an attribute missing from
    the prompt is refused by :func:`~..subjects.tokens.map_subjects` already).
    """
    attributes = tuple(tuple(positions for positions, owner in tokens.attribute_pairs if owner == index)
                       for index in range(len(tokens.subjects)))
    if config.mode == "tv_bind":
        if not any(attributes):
            raise SubjectTokenError(
                "mode tv_bind binds attributes to their subjects, but no subject has one. Write each attribute "
                "before its subject in the subjects input ('yellow bowl, blue cat'), or use mode tv.")
    term = DivideBindTerm(tokens.subject_positions, attributes, config, weight, tokens.loss_columns)
    return GuidanceSpec(tokens, (term,), (schedule,))
