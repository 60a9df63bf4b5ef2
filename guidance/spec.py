"""AG_GUIDANCE: which losses steer the latent (terms, each with a weight) and when (the schedule).

A term evaluates the attention of one guidance pass (:class:`TermInputs`) and returns one loss per image ``[B]``;
the engine minimises the weighted sum. At refinement points the engine keeps updating an image while any term
says its target is unmet.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from .losses.attend_excite import AttendExciteConfig, attend_excite_loss, needs_refinement
from .schedule import GuidanceSchedule
from .tokens import SubjectTokens


@dataclass(frozen=True)
class TermInputs:
    """What every term sees in one guidance pass of loop index ``step`` of a ``steps``-step run.

    ``maps`` ``[B, h, w, T]``: the pass's aggregated latent/4 attention, carrying the latent's gradient.
    ``previous`` ``[B, h, w, T]``: the latent/4 maps of the previous guided step's first pass of this run, detached;
    None at the run's first guided step.
    """

    maps: torch.Tensor
    step: int
    steps: int
    previous: torch.Tensor | None = None


class LossTerm(Protocol):
    weight: float

    def evaluate(self, inputs: TermInputs) -> Any:
        """The term's loss; the result has ``.loss`` ``[B]``."""

    def unmet(self, result: Any, threshold: float) -> torch.Tensor:
        """``[B]`` bool: images whose target at this refinement threshold is not reached yet."""


@dataclass(frozen=True)
class AttendExciteTerm:
    subjects: tuple[tuple[int, ...], ...]
    word_positions: tuple[int, ...]
    config: AttendExciteConfig = AttendExciteConfig()
    weight: float = 1.0

    def evaluate(self, inputs: TermInputs) -> Any:
        return attend_excite_loss(inputs.maps, self.subjects, self.config, self.word_positions)

    def unmet(self, result: Any, threshold: float) -> torch.Tensor:
        return needs_refinement(result.loss, threshold)


@dataclass(frozen=True)
class GuidanceSpec:
    """The AG_GUIDANCE value. ``tokens`` names the subjects whose maps are recorded for AG_ATTENTION."""

    tokens: SubjectTokens
    terms: tuple[LossTerm, ...]
    schedule: GuidanceSchedule

    @property
    def active(self) -> bool:
        schedule = self.schedule
        return any(term.weight != 0 for term in self.terms) and schedule.guided_percent > 0 and schedule.scale_factor > 0

    def guides(self, step: int, steps: int) -> bool:
        return self.active and self.schedule.is_guided(step, steps)

    def total_loss(self, results: Sequence[Any]) -> torch.Tensor:
        return sum(term.weight * result.loss for term, result in zip(self.terms, results))

    def unmet(self, results: Sequence[Any], threshold: float) -> torch.Tensor:
        flags = [term.unmet(result, threshold) for term, result in zip(self.terms, results) if term.weight != 0]
        return torch.stack(flags).any(dim=0)


def attend_and_excite(tokens: SubjectTokens, schedule: GuidanceSchedule, config: AttendExciteConfig = AttendExciteConfig(),
                      weight: float = 1.0) -> GuidanceSpec:
    term = AttendExciteTerm(tokens.subject_positions, tokens.word_positions, config, weight)
    return GuidanceSpec(tokens, (term,), schedule)
