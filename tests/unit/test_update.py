"""The latent update and A&E's refinement bookkeeping, on a synthetic one-number-per-image latent."""
import logging
from dataclasses import dataclass

import pytest
import torch

from attention_guidance.guidance.capture.sites import GUIDANCE_LEVEL
from attention_guidance.guidance.engine.schedule import GuidanceSchedule, RefinementPoint
from attention_guidance.guidance.engine.spec import GuidanceSpec, LevelMaps
from attention_guidance.guidance.engine.update import (
    GuidanceObserver,
    SavedTensorGuard,
    StepContext,
    guidance_pass,
    guide_latent,
    latent_step_scale,
)
from attention_guidance.guidance.subjects.tokens import SubjectTokens

SIGMA = 2.0
TOKENS = SubjectTokens("p", ("<|startoftext|>",), (), False)


@dataclass(frozen=True)
class Result:
    loss: torch.Tensor
    x: torch.Tensor


@dataclass(frozen=True)
class LinearTerm:
    """Loss ``-x`` per image (gradient -1): every update moves x up by exactly alpha·(1+sigma²)."""

    met_at: float
    weight: float = 1.0
    levels = ()

    def evaluate(self, inputs):
        x = inputs.maps.flatten(1)[:, 0]  # the "maps" are the latent itself here
        return Result(-x, x)

    def unmet(self, result, threshold):
        return result.x < self.met_at


def run(x, term, schedule, step=0, steps=10, scale=None, flow=False):
    spec = GuidanceSpec(TOKENS, (term,), (schedule,))
    passes = []

    def forward(xg):
        passes.append(xg.detach().clone())
        return {GUIDANCE_LEVEL: LevelMaps(xg if scale is None else xg * scale.view(-1, 1), 1)}

    new_x, first, report = guide_latent(x, spec, forward, StepContext(step, steps, SIGMA), flow, SavedTensorGuard(),
                                        GuidanceObserver(), lambda: None)
    return new_x, report, passes


def schedule(cap=20, threshold_at=0.0):
    return GuidanceSchedule(refinement_points=(RefinementPoint(threshold_at, 0.5),), max_refinement_steps=cap)


STEP_LENGTH = schedule().step_size(0, 10) * (1 + SIGMA ** 2)


def test_refinement_stops_on_the_loss_before_the_latest_update():
    new_x, report, passes = run(torch.zeros(1, 1), LinearTerm(met_at=1.5 * STEP_LENGTH), schedule())
    # Unmet at 0 and at 1 step, met at 2: the reference updates once more before noticing, then takes the regular
    # step: 3 refinement updates + 1 regular = 4 steps; it runs 1 + 3 + 1 forwards, we reuse the first: 1 + 3.
    assert report.refinement_steps == 3
    assert len(passes) == 4
    torch.testing.assert_close(new_x, torch.full((1, 1), 4 * STEP_LENGTH))


def test_refinement_cap_and_plain_steps():
    capped, report, _ = run(torch.zeros(1, 1), LinearTerm(met_at=1e9), schedule(cap=3))
    assert report.refinement_steps == 3
    torch.testing.assert_close(capped, torch.full((1, 1), 4 * STEP_LENGTH))
    plain, report, passes = run(torch.zeros(1, 1), LinearTerm(met_at=1e9), schedule(threshold_at=50.0), step=1)
    assert report.refinement_steps == 0 and len(passes) == 1  # step 1 is no refinement point
    torch.testing.assert_close(plain, torch.full((1, 1), schedule().step_size(1, 10) * (1 + SIGMA ** 2)))


def test_a_cap_of_zero_means_no_refinement():
    x, report, passes = run(torch.zeros(1, 1), LinearTerm(met_at=1e9), schedule(cap=0))
    assert report.refinement_steps == 0 and len(passes) == 1
    torch.testing.assert_close(x, torch.full((1, 1), STEP_LENGTH))  # the regular step only


def test_a_point_with_its_own_cap_overrides_the_schedule_cap():
    points = (RefinementPoint(0.0, 0.5, max_steps=5), RefinementPoint(50.0, 0.5))
    capped = GuidanceSchedule(guided_percent=100.0, refinement_points=points, max_refinement_steps=2)
    first, report, _ = run(torch.zeros(1, 1), LinearTerm(met_at=1e9), capped)
    assert report.refinement_steps == 5
    torch.testing.assert_close(first, torch.full((1, 1), 6 * STEP_LENGTH))
    _, report, _ = run(torch.zeros(1, 1), LinearTerm(met_at=1e9), capped, step=5)
    assert report.refinement_steps == 2


def test_each_image_refines_on_its_own_criterion():
    x = torch.tensor([[0.0], [10 * STEP_LENGTH]])  # image 1 already meets the target
    new_x, report, _ = run(x, LinearTerm(met_at=1.5 * STEP_LENGTH), schedule())
    assert report.refinement_steps == 3
    torch.testing.assert_close(new_x, torch.tensor([[4 * STEP_LENGTH], [11 * STEP_LENGTH]]))


def test_non_finite_images_are_skipped_and_logged(caplog):
    x = torch.zeros(2, 1)
    with caplog.at_level(logging.WARNING, logger="attention_guidance"):
        new_x, report, _ = run(x, LinearTerm(met_at=-1.0), GuidanceSchedule(refinement_points=()),
                               scale=torch.tensor([1.0, float("nan")]))
    assert report.skipped_images == 1 and "non-finite" in caplog.text
    assert new_x[0].item() > 0
    assert new_x[1].item() == 0.0  # the NaN image keeps its latent: no NaN is ever written


def test_flow_models_step_without_the_noise_factor():
    flow_x, _, _ = run(torch.zeros(1, 1), LinearTerm(met_at=-1.0), GuidanceSchedule(refinement_points=()), flow=True)
    torch.testing.assert_close(flow_x, torch.full((1, 1), schedule().step_size(0, 10)))
    assert latent_step_scale(SIGMA, flow=False) == 1 + SIGMA ** 2 and latent_step_scale(SIGMA, flow=True) == 1.0


def test_the_loss_batch_must_match_the_latent_batch():
    spec = GuidanceSpec(TOKENS, (LinearTerm(met_at=0.0),), (GuidanceSchedule(refinement_points=()),))

    def forward(xg):
        return {GUIDANCE_LEVEL: LevelMaps(torch.cat([xg, xg]), 1)}  # two rows per image, e.g. two conds

    with pytest.raises(ValueError, match="loss has shape \\(2,\\) for a latent batch of 1"):
        guidance_pass(torch.zeros(1, 1), spec, forward, StepContext(0, 10, SIGMA), SavedTensorGuard())


def test_an_in_place_addition_turns_the_saved_tensor_guard_on():
    spec = GuidanceSpec(TOKENS, (LinearTerm(met_at=0.0),), (GuidanceSchedule(refinement_points=()),))
    weight = torch.tensor([[3.0]])

    def forward(xg):  # squares a tensor, then adds into it in place, as some model code does
        hidden = xg * weight
        squared = hidden * hidden
        hidden += 1.0
        return {GUIDANCE_LEVEL: LevelMaps(squared + hidden, 1)}

    guard = SavedTensorGuard()
    result = guidance_pass(torch.ones(1, 1), spec, forward, StepContext(0, 10, SIGMA), guard)
    assert guard.enabled
    torch.testing.assert_close(result.grad, torch.tensor([[-(2 * 9.0 + 3.0)]]))  # d(-(9x² + 3x + 1))/dx at x = 1
