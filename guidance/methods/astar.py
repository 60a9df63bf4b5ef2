"""A-STAR as a guidance term: segregation of the subjects' maps plus retention of each subject's previous region
(or of its user layout), Eq. 4 of Agarwal et al. 2023 (docs/methods.md, "A-STAR")."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..engine.schedule import GuidanceSchedule
from ..engine.spec import GuidanceSpec, TermInputs
from ..losses.astar import AStarConfig, AStarResult, astar_loss, concept_maps
from ..subjects.layout import SubjectLayout
from ..subjects.tokens import SubjectTokens


def paper_schedule() -> GuidanceSchedule:
    """A&E's guided window and step size; the paper states no refinement, so there is none."""
    return GuidanceSchedule(refinement_points=())


@dataclass(frozen=True)
class AStarTerm:
    """``L = L_seg + L_ret`` per image.

    The retention target of a subject is its layout mask if the layout gives one, else the binarised map of the
    previous guided step (``TermInputs.previous``, preprocessed like the current maps); at the first guided step
    without a layout the loss is ``L_seg`` alone.
    """

    levels: ClassVar[tuple[int, ...]] = ()  # latent/4 only
    subjects: tuple[tuple[int, ...], ...]
    config: AStarConfig = AStarConfig()
    layout: SubjectLayout | None = None
    weight: float = 1.0
    columns: tuple[int, ...] | None = None  # re-softmax columns of "ae" preprocessing (None: CLIP chunks' [1:-1])

    def evaluate(self, inputs: TermInputs) -> AStarResult:
        maps = inputs.maps
        columns = None if self.columns is None else torch.tensor(self.columns)
        previous = None if inputs.previous is None else concept_maps(inputs.previous, self.subjects, self.config,
                                                                     columns)
        grid = None if self.layout is None else self.layout.grid(tuple(maps.shape[1:3]), maps.shape[0])
        return astar_loss(maps, self.subjects, previous, self.config, grid, columns)

    def unmet(self, result: Any, threshold: float) -> torch.Tensor:
        """A-STAR has no refinement criterion: never asks for refinement."""
        return torch.zeros_like(result.loss, dtype=torch.bool)


def astar(tokens: SubjectTokens, schedule: GuidanceSchedule, config: AStarConfig = AStarConfig(),
          layout: SubjectLayout | None = None, weight: float = 1.0) -> GuidanceSpec:
    """An A-STAR guidance (the paper's schedule is :func:`paper_schedule`).

    Raises ValueError when the layout was made for other subjects than ``tokens`` names.
    """
    if layout is not None and layout.labels != tokens.labels:
        raise ValueError(f"the layout is for the subjects ({', '.join(layout.labels)}) but the tokens name "
                         f"({', '.join(tokens.labels)}); build the layout from the same tokens, one mask per subject")
    term = AStarTerm(tokens.subject_positions, config, layout, weight, tokens.loss_columns)
    return GuidanceSpec(tokens, (term,), (schedule,))
