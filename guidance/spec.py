"""AG_GUIDANCE: which losses steer the latent (terms, each with a weight) and when (the schedule).

A term evaluates the attention of one guidance pass (:class:`TermInputs`) and returns one loss per image ``[B]``;
the engine minimises the weighted sum. At refinement points the engine keeps updating an image while any term
says its target is unmet.

A spec built by one method node has one schedule for all its terms. A combined spec (:func:`combine`) keeps each
term's own schedule in ``term_schedules``: every term is applied on its own guided steps with its own step size
and refines at its own points; ``schedule`` then only spans the run (the longest window, the largest step size as
the reference the engine steps with).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple, Protocol

import torch

from .losses.attend_excite import AttendExciteConfig, attend_excite_loss, needs_refinement
from .schedule import GuidanceSchedule
from .tokens import SubjectTokens


@dataclass(frozen=True)
class LevelMaps:
    """One extra level's attention in a guidance pass: ``maps`` ``[B, h_k, w_k, T]``, the mean over the ``heads``
    head maps of all cross-attention layers at that level (conditional branch, carrying the latent's gradient)."""

    maps: torch.Tensor
    heads: int


@dataclass(frozen=True)
class TermInputs:
    """What every term sees in one guidance pass of loop index ``step`` of a ``steps``-step run.

    ``maps`` ``[B, h, w, T]``: the pass's aggregated latent/4 attention, carrying the latent's gradient.
    ``previous`` ``[B, h, w, T]``: the latent/4 maps of the previous guided step's first pass of this run, detached;
    None at the run's first guided step.
    ``level_maps``: ``{down-sampling factor: LevelMaps}`` for the extra levels the spec's terms asked for
    (:attr:`LossTerm.levels`) that the model has; a requested level the UNet lacks (SDXL has no latent/1
    cross-attention) is absent. Map sizes are ``ceil(latent / factor)`` per side.
    """

    maps: torch.Tensor
    step: int
    steps: int
    previous: torch.Tensor | None = None
    level_maps: Mapping[int, LevelMaps] = field(default_factory=dict)


class LossTerm(Protocol):
    weight: float
    levels: tuple[int, ...]
    """Down-sampling factors besides latent/4 whose maps the term reads from ``TermInputs.level_maps``
    (``()`` for latent/4 only: every extra level makes the guidance pass record, and keep for backward, more)."""

    def evaluate(self, inputs: TermInputs) -> Any:
        """The term's loss; the result has ``.loss`` ``[B]``."""

    def unmet(self, result: Any, threshold: float) -> torch.Tensor:
        """``[B]`` bool: images whose target at this refinement threshold is not reached yet."""


class Refinement(NamedTuple):
    """Refinement at one step: per term, its threshold (``None``: the term does not refine here), and the cap."""

    thresholds: tuple[float | None, ...]
    max_steps: int


@dataclass(frozen=True)
class AttendExciteTerm:
    subjects: tuple[tuple[int, ...], ...]
    word_positions: tuple[int, ...]
    config: AttendExciteConfig = AttendExciteConfig()
    weight: float = 1.0
    levels: ClassVar[tuple[int, ...]] = ()

    def evaluate(self, inputs: TermInputs) -> Any:
        return attend_excite_loss(inputs.maps, self.subjects, self.config, self.word_positions)

    def unmet(self, result: Any, threshold: float) -> torch.Tensor:
        return needs_refinement(result.loss, threshold)


@dataclass(frozen=True)
class GuidanceSpec:
    """The AG_GUIDANCE value. ``tokens`` names the subjects whose maps are recorded for AG_ATTENTION.

    ``term_schedules``: one schedule per term in a combined spec, empty when ``schedule`` applies to every term.
    """

    tokens: SubjectTokens
    terms: tuple[LossTerm, ...]
    schedule: GuidanceSchedule
    term_schedules: tuple[GuidanceSchedule, ...] = ()

    def __post_init__(self) -> None:
        if self.term_schedules and len(self.term_schedules) != len(self.terms):
            raise ValueError(f"{len(self.term_schedules)} term schedules for {len(self.terms)} terms")

    def schedule_of(self, index: int) -> GuidanceSchedule:
        return self.term_schedules[index] if self.term_schedules else self.schedule

    def _term_active(self, index: int) -> bool:
        schedule = self.schedule_of(index)
        return self.terms[index].weight != 0 and schedule.guided_percent > 0 and schedule.scale_factor > 0

    @property
    def active(self) -> bool:
        return any(self._term_active(index) for index in range(len(self.terms)))

    @property
    def levels(self) -> tuple[int, ...]:
        """The extra attention levels (down-sampling factors) the active terms read, sorted."""
        return tuple(sorted({level for index, term in enumerate(self.terms) if self._term_active(index)
                             for level in term.levels}))

    def _term_guides(self, index: int, step: int, steps: int) -> bool:
        return self._term_active(index) and self.schedule_of(index).is_guided(step, steps)

    def guides(self, step: int, steps: int) -> bool:
        return any(self._term_guides(index, step, steps) for index in range(len(self.terms)))

    def step_size(self, step: int, steps: int) -> float:
        """The step size the engine updates with at loop index ``step``: the schedule's, or in a combined spec the
        largest among the terms guiding this step."""
        if not self.term_schedules:
            return self.schedule.step_size(step, steps)
        return max((self.schedule_of(index).step_size(step, steps) for index in range(len(self.terms))
                    if self._term_guides(index, step, steps)), default=0.0)

    def total_loss(self, results: Sequence[Any], step: int, steps: int) -> torch.Tensor:
        """``[B]``: the weighted sum the engine differentiates at loop index ``step``.

        In a combined spec each term's weight is scaled by its own step size over :meth:`step_size`, and terms
        outside their own guided window are left out, so the update moves the latent by the sum of what each term
        would move it alone.
        """
        if not self.term_schedules:
            return sum(term.weight * result.loss for term, result in zip(self.terms, results))
        reference = self.step_size(step, steps)
        total = torch.zeros_like(results[0].loss)
        for index, (term, result) in enumerate(zip(self.terms, results)):
            if reference > 0 and self._term_guides(index, step, steps):
                total = total + term.weight * (self.schedule_of(index).step_size(step, steps) / reference) * result.loss
        return total

    def refinement(self, step: int, steps: int) -> Refinement | None:
        """Who refines at loop index ``step`` and how often at most; ``None`` where no active term refines."""
        thresholds = tuple(self.schedule_of(index).refinement_threshold(step, steps) if self._term_active(index)
                           else None for index in range(len(self.terms)))
        refining = [index for index, threshold in enumerate(thresholds) if threshold is not None]
        if not refining:
            return None
        return Refinement(thresholds, max(self.schedule_of(index).refinement_cap(step, steps) for index in refining))

    def unmet(self, results: Sequence[Any], thresholds: Sequence[float | None]) -> torch.Tensor:
        """``[B]`` bool: images for which a refining term's target is not reached."""
        flags = [term.unmet(result, threshold) for term, result, threshold in zip(self.terms, results, thresholds)
                 if threshold is not None]
        return torch.stack(flags).any(dim=0)


def attend_and_excite(tokens: SubjectTokens, schedule: GuidanceSchedule, config: AttendExciteConfig = AttendExciteConfig(),
                      weight: float = 1.0) -> GuidanceSpec:
    term = AttendExciteTerm(tokens.subject_positions, tokens.word_positions, config, weight)
    return GuidanceSpec(tokens, (term,), schedule)
