"""AG_GUIDANCE: which losses steer the latent (terms, each with a weight) and when (each term's schedule).

A term evaluates the attention of one guidance pass (:class:`TermInputs`) and returns one loss per image ``[B]``;
the engine minimises the weighted sum. Every term carries its own schedule: it is applied on its own guided steps
with its own step size and refines at its own points (a spec from one method node has one term; Combine Guidance
joins the terms of two specs). At refinement points the engine keeps updating an image while a refining term says
its target is unmet, each term up to its own cap.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple, Protocol

import torch

from ..subjects.tokens import SubjectTokens
from .schedule import GuidanceSchedule


@dataclass(frozen=True)
class LevelMaps:
    """One extra level's attention in a guidance pass: ``maps`` ``[B, h_k, w_k, T]``, the mean over the ``heads``
    head maps of all cross-attention layers at that level (conditional branch, carrying the latent's gradient)."""

    maps: torch.Tensor
    heads: int
    joint: torch.Tensor | None = None
    """On diffusion transformers, the exact joint-softmax probabilities ``[B, h_k, w_k, T]`` beside ``maps`` (which
    are normalised over the text keys), when a term reads them (:attr:`LossTerm.joint_attention`)."""


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
    joint_maps: torch.Tensor | None = None
    """``[B, h, w, T]``: on a diffusion transformer, the exact joint-softmax probabilities of the latent/4 maps (a row's
    text part sums to the share of attention the pixel gives the text); None on UNets, whose cross-attention
    ``maps`` are exact already, and when no term asked for them."""


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
    """Refinement at one step, per term: its threshold (``None``: the term does not refine here) and its cap (most
    updates it drives at this point)."""

    thresholds: tuple[float | None, ...]
    caps: tuple[int, ...]


@dataclass(frozen=True)
class GuidanceSpec:
    """The AG_GUIDANCE value: ``terms`` with one schedule each (``schedules``). ``tokens`` names the subjects whose
    maps are recorded for AG_ATTENTION."""

    tokens: SubjectTokens
    terms: tuple[LossTerm, ...]
    schedules: tuple[GuidanceSchedule, ...]
    dit_blocks: tuple[int, ...] | None = None
    """On diffusion transformers, the joint blocks whose attention is read (None: the family's default); UNets
    ignore it."""

    def __post_init__(self) -> None:
        if len(self.schedules) != len(self.terms):
            raise ValueError(f"{len(self.schedules)} schedules for {len(self.terms)} terms")

    def _term_active(self, index: int) -> bool:
        schedule = self.schedules[index]
        return self.terms[index].weight != 0 and schedule.guided_percent > 0 and schedule.scale_factor > 0

    def for_run(self, sigmas: Sequence[float], flow: bool) -> GuidanceSpec:
        """The spec for one run over ``sigmas`` (see :meth:`GuidanceSchedule.for_run`)."""
        schedules = tuple(schedule.for_run(sigmas, flow) for schedule in self.schedules)
        return self if schedules == self.schedules else replace(self, schedules=schedules)

    @property
    def active(self) -> bool:
        return any(self._term_active(index) for index in range(len(self.terms)))

    @property
    def levels(self) -> tuple[int, ...]:
        """The extra attention levels (down-sampling factors) the active terms read, sorted."""
        return tuple(sorted({level for index, term in enumerate(self.terms) if self._term_active(index)
                             for level in term.levels}))

    @property
    def joint_attention(self) -> bool:
        """Whether an active term reads a diffusion transformer's exact joint-softmax maps (recorded only then)."""
        return any(getattr(self.terms[index], "joint_attention", False) for index in range(len(self.terms))
                   if self._term_active(index))

    def _term_guides(self, index: int, step: int, steps: int) -> bool:
        return self._term_active(index) and self.schedules[index].is_guided(step, steps)

    def guides(self, step: int, steps: int) -> bool:
        return any(self._term_guides(index, step, steps) for index in range(len(self.terms)))

    def step_size(self, step: int, steps: int) -> float:
        """The step size the engine updates with at loop index ``step``: the largest among the terms guiding it."""
        return max((self.schedules[index].step_size(step, steps) for index in range(len(self.terms))
                    if self._term_guides(index, step, steps)), default=0.0)

    def evaluate(self, inputs: TermInputs) -> tuple[list[Any], torch.Tensor]:
        """Every term's result and the ``[B]`` loss the engine differentiates at ``inputs.step``.

        Each term guiding this step adds its weight times its loss, scaled by its own step size over
        :meth:`step_size`; terms outside their guided window add nothing. So the update moves the latent by the sum of
        what each term would move it alone.
        """
        results = [term.evaluate(inputs) for term in self.terms]
        reference = self.step_size(inputs.step, inputs.steps)
        total = torch.zeros_like(results[0].loss)
        for index, (term, result) in enumerate(zip(self.terms, results)):
            if reference > 0 and self._term_guides(index, inputs.step, inputs.steps):
                share = self.schedules[index].step_size(inputs.step, inputs.steps) / reference
                total = total + term.weight * share * result.loss
        return results, total

    def refinement(self, step: int, steps: int) -> Refinement | None:
        """Who refines at loop index ``step`` and how often at most; ``None`` where no active term refines."""
        thresholds = tuple(self.schedules[index].refinement_threshold(step, steps) if self._term_active(index)
                           else None for index in range(len(self.terms)))
        if all(threshold is None for threshold in thresholds):
            return None
        caps = tuple(schedule.refinement_cap(step, steps) for schedule in self.schedules)
        return Refinement(thresholds, caps)

    def unmet(self, results: Sequence[Any], refinement: Refinement, updates: int) -> torch.Tensor:
        """``[B]`` bool: images for which a term that refines here, and has driven fewer than its cap of ``updates``
        so far, has not reached its target."""
        flags = [term.unmet(result, threshold)
                 for term, result, threshold, cap in zip(self.terms, results, refinement.thresholds, refinement.caps)
                 if threshold is not None and updates < cap]
        if not flags:
            return torch.zeros_like(results[0].loss, dtype=torch.bool)
        return torch.stack(flags).any(dim=0)

