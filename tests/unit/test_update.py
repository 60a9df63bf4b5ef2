"""The latent update and A&E's refinement bookkeeping (trap T6), on a synthetic one-number-per-image latent."""
import logging
from dataclasses import dataclass

import torch

from attention_guidance.guidance.schedule import GuidanceSchedule, RefinementPoint
from attention_guidance.guidance.spec import GuidanceSpec
from attention_guidance.guidance.tokens import SubjectTokens
from attention_guidance.guidance.update import guide_latent, latent_gradient, make_autograd_ready

SIGMA = 2.0


@dataclass(frozen=True)
class LinearTerm:
    """Loss ``-x`` per image (gradient -1): every update moves x up by exactly alpha·(1+sigma²)."""

    met_at: float
    weight: float = 1.0
    levels = ()

    def evaluate(self, inputs):
        return inputs.maps  # the "maps" are the latent itself here

    def unmet(self, result, threshold):
        return result.flatten(1)[:, 0] < self.met_at


def run(x, term, schedule, step=0, steps=10, loss_scale=None):
    spec = GuidanceSpec(SubjectTokens("p", ("<|startoftext|>",), (), False), (term,), schedule)
    passes = []

    def forward_and_loss(xg):
        loss = -xg.flatten(1)[:, 0] * (1.0 if loss_scale is None else loss_scale)
        return [xg], loss, xg

    def evaluate(latent):
        passes.append(latent.clone())
        return latent_gradient(latent, forward_and_loss, guard_saved_tensors=False)

    new_x, first, report = guide_latent(x, SIGMA, step, steps, spec, evaluate, lambda: None)
    return new_x, report, passes


def schedule(cap=20, threshold_at=0.0):
    return GuidanceSchedule(refinement_points=(RefinementPoint(threshold_at, 0.5),), max_refinement_steps=cap)


def test_refinement_stops_on_the_loss_before_the_latest_update():
    step_length = schedule().step_size(0, 10) * (1 + SIGMA ** 2)
    new_x, report, passes = run(torch.zeros(1, 1), LinearTerm(met_at=1.5 * step_length), schedule())
    # Unmet at 0 and at 1 step, met at 2: the reference updates once more before noticing, then takes the regular
    # step: 3 refinement updates + 1 regular = 4 steps; it runs 1 + 3 + 1 forwards, we reuse the first: 1 + 3.
    assert report.refinement_steps == 3
    assert len(passes) == 4
    torch.testing.assert_close(new_x, torch.full((1, 1), 4 * step_length))


def test_refinement_cap_and_plain_steps():
    step_length = schedule().step_size(0, 10) * (1 + SIGMA ** 2)
    capped, report, _ = run(torch.zeros(1, 1), LinearTerm(met_at=1e9), schedule(cap=3))
    assert report.refinement_steps == 3
    torch.testing.assert_close(capped, torch.full((1, 1), 4 * step_length))
    plain, report, passes = run(torch.zeros(1, 1), LinearTerm(met_at=1e9), schedule(threshold_at=50.0), step=1)
    assert report.refinement_steps == 0 and len(passes) == 1  # step 1 is no refinement point
    torch.testing.assert_close(plain, torch.full((1, 1), schedule().step_size(1, 10) * (1 + SIGMA ** 2)))


def test_a_point_with_its_own_cap_overrides_the_schedule_cap():
    step_length = schedule().step_size(0, 10) * (1 + SIGMA ** 2)
    points = (RefinementPoint(0.0, 0.5, max_steps=5), RefinementPoint(50.0, 0.5))
    capped = GuidanceSchedule(guided_percent=100.0, refinement_points=points, max_refinement_steps=2)
    first, report, _ = run(torch.zeros(1, 1), LinearTerm(met_at=1e9), capped)
    assert report.refinement_steps == 5
    torch.testing.assert_close(first, torch.full((1, 1), 6 * step_length))
    _, report, _ = run(torch.zeros(1, 1), LinearTerm(met_at=1e9), capped, step=5)
    assert report.refinement_steps == 2


def test_each_image_refines_on_its_own_criterion():
    step_length = schedule().step_size(0, 10) * (1 + SIGMA ** 2)
    x = torch.tensor([[0.0], [10 * step_length]])  # image 1 already meets the target
    new_x, report, _ = run(x, LinearTerm(met_at=1.5 * step_length), schedule())
    assert report.refinement_steps == 3
    torch.testing.assert_close(new_x, torch.tensor([[4 * step_length], [11 * step_length]]))


def test_non_finite_images_are_skipped_and_logged(caplog):
    x = torch.zeros(2, 1)
    with caplog.at_level(logging.WARNING, logger="attention_guidance"):
        new_x, report, _ = run(x, LinearTerm(met_at=-1.0), GuidanceSchedule(refinement_points=()),
                               loss_scale=torch.tensor([1.0, float("nan")]))
    assert report.skipped_images == 1 and "non-finite" in caplog.text
    assert new_x[0].item() > 0
    assert new_x[1].item() == 0.0  # the NaN image keeps its latent: no NaN is ever written


def test_gradients_flow_through_inference_tensors():
    with torch.inference_mode():
        layer = torch.nn.Linear(3, 1)
        x = torch.randn(2, 3)
    make_autograd_ready(layer)
    assert not any(p.is_inference() for p in layer.parameters())
    result = latent_gradient(x, lambda xg: ([], layer(xg).sum(dim=1), xg), guard_saved_tensors=False)
    torch.testing.assert_close(result.grad, layer.weight.detach().expand(2, 3))
