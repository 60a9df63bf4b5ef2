"""Combining guidances: terms with their weights, each term's own window, step size and refinement points."""
from dataclasses import dataclass

import pytest
import torch

from attention_guidance.guidance.capture.sites import GUIDANCE_LEVEL
from attention_guidance.guidance.engine.schedule import GuidanceSchedule, RefinementPoint
from attention_guidance.guidance.engine.spec import GuidanceSpec, LevelMaps, Refinement, TermInputs
from attention_guidance.guidance.engine.update import GuidanceObserver, SavedTensorGuard, StepContext, guide_latent
from attention_guidance.guidance.methods.combine import CombineError, combine
from attention_guidance.guidance.subjects.tokens import PromptTokens, map_subjects

PIECES = ("<|startoftext|>", "a</w>", "red</w>", "cat</w>", "and</w>", "a</w>", "frog</w>", *["<|endoftext|>"] * 70)
TOKENS = map_subjects("a red cat and a frog", PromptTokens(PIECES), "red cat, frog")


@dataclass(frozen=True)
class Result:
    loss: torch.Tensor


@dataclass(frozen=True)
class SlopeTerm:
    """Loss ``-slope · x`` (one number per image); unmet while ``x`` is below ``met_at``."""

    slope: float
    met_at: float = -1e9
    weight: float = 1.0
    levels: tuple[int, ...] = ()

    def evaluate(self, inputs):
        return Result(-self.slope * inputs.maps.flatten(1)[:, 0])

    def unmet(self, result, threshold):
        return -result.loss / self.slope < self.met_at


def spec(term, schedule, tokens=TOKENS):
    return GuidanceSpec(tokens, (term,), (schedule,))


def guide(spec_, step, steps=10, sigma=0.0):
    def forward(xg):
        return {GUIDANCE_LEVEL: LevelMaps(xg, 1)}

    x, _, report = guide_latent(torch.zeros(1, 1), spec_, forward, StepContext(step, steps, sigma), False,
                                SavedTensorGuard(), GuidanceObserver(), lambda: None)
    return float(x), report


def test_each_term_moves_the_latent_with_its_own_weight_window_and_step_size():
    short = spec(SlopeTerm(1.0, weight=2.0, levels=(2,)), GuidanceSchedule(guided_percent=30.0, refinement_points=(),
                                                                            scale_factor=10.0))
    long = spec(SlopeTerm(3.0, levels=(1,)), GuidanceSchedule(guided_percent=60.0, refinement_points=(),
                                                              scale_factor=20.0, scale_range=(1.0, 1.0)))
    both = combine(short, long)
    assert [term.slope for term in both.terms] == [1.0, 3.0] and [t.weight for t in both.terms] == [2.0, 1.0]
    assert both.levels == (1, 2)
    assert both.schedules == short.schedules + long.schedules
    for step in range(10):
        alone = [guide(part, step)[0] if part.guides(step, 10) else 0.0 for part in (short, long)]
        assert both.guides(step, 10) == any(part.guides(step, 10) for part in (short, long))
        if both.guides(step, 10):
            assert guide(both, step)[0] == pytest.approx(sum(alone), rel=1e-6)
    assert not both.guides(6, 10)


def test_refinement_points_keep_their_thresholds_and_caps():
    first = spec(SlopeTerm(1.0, met_at=1e9), GuidanceSchedule(
        refinement_points=(RefinementPoint(0.0, 0.0, max_steps=3),), scale_factor=1.0))
    second = spec(SlopeTerm(1.0, met_at=1e9), GuidanceSchedule(
        refinement_points=(RefinementPoint(20.0, 0.0),), max_refinement_steps=5, scale_factor=1.0))
    both = combine(first, second)
    assert both.refinement(0, 10) == Refinement((0.0, None), (3, 5))
    assert both.refinement(2, 10) == Refinement((None, 0.0), (20, 5))
    assert both.refinement(1, 10) is None
    assert guide(both, 0)[1].refinement_steps == 3 and guide(both, 2)[1].refinement_steps == 5
    met = combine(spec(SlopeTerm(1.0), first.schedules[0]), second)  # the term refining at step 0 is satisfied
    assert guide(met, 0)[1].refinement_steps == 0


def test_terms_refining_at_one_step_each_stop_at_their_own_cap():
    few = spec(SlopeTerm(1.0, met_at=1e9), GuidanceSchedule(refinement_points=(RefinementPoint(0.0, 0.0),),
                                                            max_refinement_steps=2, scale_factor=1.0))
    many = spec(SlopeTerm(1.0, met_at=1e9), GuidanceSchedule(refinement_points=(RefinementPoint(0.0, 0.0),),
                                                             max_refinement_steps=6, scale_factor=1.0))
    both = combine(few, many)
    results = [Result(torch.tensor([0.0])), Result(torch.tensor([0.0]))]
    assert both.unmet(results, both.refinement(0, 10), 2).item()  # only the second term still drives refinement
    assert not both.unmet(results, both.refinement(0, 10), 6).item()
    assert guide(both, 0)[1].refinement_steps == 6


def test_a_single_method_spec_is_unchanged():
    alone = spec(SlopeTerm(2.0, weight=3.0), GuidanceSchedule(refinement_points=()))
    _, loss = alone.evaluate(TermInputs(torch.tensor([[-0.75]]), 0, 10))
    assert loss.item() == 4.5
    assert alone.step_size(3, 10) == alone.schedules[0].step_size(3, 10)


def test_combining_guidances_of_different_prompts_says_what_to_fix():
    other = map_subjects("a cat", PromptTokens(("<|startoftext|>", "a</w>", "cat</w>", *["<|endoftext|>"] * 74)), "cat")
    with pytest.raises(CombineError, match="different prompts.*build both from the tokens of the prompt"):
        combine(spec(SlopeTerm(1.0), GuidanceSchedule()), spec(SlopeTerm(1.0), GuidanceSchedule(), other))


def test_subjects_of_both_are_recorded_once():
    cat_only = map_subjects("a red cat and a frog", PromptTokens(PIECES), "cat")
    both = combine(spec(SlopeTerm(1.0), GuidanceSchedule(), cat_only), spec(SlopeTerm(1.0), GuidanceSchedule()))
    assert both.tokens.labels == ("cat", "frog")
    assert combine(both, both).terms == both.terms * 2
