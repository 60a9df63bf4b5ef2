"""Two guidances as one: their terms run together in one engine pass, each keeping its weight and schedule."""
from __future__ import annotations

from ..schedule import GuidanceSchedule
from ..spec import GuidanceSpec
from ..tokens import SubjectTokens


class CombineError(ValueError):
    pass


def combine(a: GuidanceSpec, b: GuidanceSpec) -> GuidanceSpec:
    """``a`` and ``b`` acting together, as if each guided alone, on one latent.

    * Terms: ``a``'s then ``b``'s, weights kept.
    * Schedules: each term keeps its own. A step is guided when any term's window covers it; there every term
      whose window covers it adds its loss with its own step size (a term outside its window adds nothing).
      A step is a refinement point when any term has one there; refinement continues while a term that refines
      at this step misses its own threshold, up to the largest cap among those terms, and each update follows
      the terms guiding the step.
    * ``schedule`` of the result spans both: the longer guided window, the larger step size, no refinement of
      its own.
    * Tokens: both must come from the same prompt (same token sequence). The subjects recorded for AG_ATTENTION
      are ``a``'s, then those of ``b`` not among them.

    Raises :class:`CombineError` when the prompts differ.
    """
    if a.tokens.pieces != b.tokens.pieces:
        raise CombineError(
            f"the two guidances were built for different prompts ('{a.tokens.prompt}' and '{b.tokens.prompt}'); "
            f"build both from the tokens of the prompt you sample with")
    terms = a.terms + b.terms
    schedules = tuple(spec.schedule_of(index) for spec in (a, b) for index in range(len(spec.terms)))
    return GuidanceSpec(_merged_tokens(a.tokens, b.tokens), terms, _span(schedules), schedules)


def _merged_tokens(a: SubjectTokens, b: SubjectTokens) -> SubjectTokens:
    known = set(a.subject_positions)
    extra = tuple(subject for subject in b.subjects if subject.word.positions not in known)
    return SubjectTokens(a.prompt, a.pieces, a.subjects + extra, a.auto_picked and b.auto_picked)


def _span(schedules: tuple[GuidanceSchedule, ...]) -> GuidanceSchedule:
    strongest = max(schedules, key=lambda schedule: schedule.scale_factor)
    return GuidanceSchedule(guided_percent=max(schedule.guided_percent for schedule in schedules),
                            refinement_points=(),
                            max_refinement_steps=max(schedule.max_refinement_steps for schedule in schedules),
                            scale_factor=strongest.scale_factor, scale_range=strongest.scale_range)
