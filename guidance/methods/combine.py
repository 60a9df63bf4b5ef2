"""Two guidances as one: their terms run together in one engine pass, each keeping its weight and schedule."""
from __future__ import annotations

from dataclasses import replace

from ..capture.blocks import describe_blocks
from ..engine.spec import GuidanceSpec
from ..subjects.tokens import SubjectTokens


class CombineError(ValueError):
    pass


def combine(a: GuidanceSpec, b: GuidanceSpec) -> GuidanceSpec:
    """``a`` and ``b`` acting together, as if each guided alone, on one latent.

    * Terms: ``a``'s then ``b``'s, weights kept.
    * Schedules: each term keeps its own. A step is guided when any term's window covers it; there every term
      whose window covers it adds its loss with its own step size (a term outside its window adds nothing).
      A step is a refinement point when any term has one there; refinement continues while a term that refines
      at this step misses its own threshold and has driven fewer updates than its own cap, and each update follows
      the terms guiding the step.
    * Tokens: both must come from the same prompt (same token sequence). The subjects recorded for AG_ATTENTION
      are ``a``'s, then those of ``b`` not among them.

    Raises :class:`CombineError` when the prompts differ.
    """
    if a.tokens.pieces != b.tokens.pieces:
        raise CombineError(
            f"the two guidances were built for different prompts ('{a.tokens.prompt}' and '{b.tokens.prompt}'); "
            f"build both from the tokens of the prompt you sample with")
    if a.dit_blocks != b.dit_blocks:
        raise CombineError(
            f"the two guidances read different transformer blocks ({describe_blocks(a.dit_blocks)} and "
            f"{describe_blocks(b.dit_blocks)}); they share one recording: give both the same dit_blocks")
    return GuidanceSpec(_merged_tokens(a.tokens, b.tokens), a.terms + b.terms, a.schedules + b.schedules,
                        a.dit_blocks)


def _merged_tokens(a: SubjectTokens, b: SubjectTokens) -> SubjectTokens:
    known = set(a.subject_positions)
    extra = tuple(subject for subject in b.subjects if subject.word.positions not in known)
    return replace(a, subjects=a.subjects + extra, auto_picked=a.auto_picked and b.auto_picked)

