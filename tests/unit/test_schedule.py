"""Guidance schedule: the authors' 50-step A&E schedule and its percent mapping at other lengths (docs/methods.md,
"Guided window and refinement points")."""
import dataclasses
import json

import pytest
import torch

from attention_guidance.guidance.engine import schedule as S
from devkit import REFERENCE_DIR

OFFICIAL = json.loads((REFERENCE_DIR / "ae_loss.json").read_text())["schedule_official_defaults"]


def test_defaults_are_the_authors():
    schedule = S.GuidanceSchedule()
    steps = OFFICIAL["num_inference_steps"]
    assert schedule.scale_factor == OFFICIAL["scale_factor"]
    assert schedule.scale_range == tuple(OFFICIAL["scale_range"])
    assert schedule.max_refinement_steps == OFFICIAL["max_refinement_steps"]
    assert schedule.guided_steps(steps) == OFFICIAL["max_iter_to_alter"]
    assert schedule.refinement_thresholds(steps) == {int(i): t for i, t in OFFICIAL["thresholds"].items()}
    with pytest.raises(dataclasses.FrozenInstanceError):
        schedule.guided_percent = 10.0


def test_step_sizes_match_the_authors():
    schedule = S.GuidanceSchedule()
    steps = OFFICIAL["num_inference_steps"]
    sizes = torch.tensor([schedule.step_size(i, steps) for i in range(steps)], dtype=torch.float64)
    expected = torch.tensor(OFFICIAL["step_size_per_step_index"], dtype=torch.float64)
    torch.testing.assert_close(sizes, expected, atol=1e-5, rtol=0)
    table = {0: 20.0, 1: 19.8976975, 10: 18.9521417, 20: 17.8428514, 24: 17.3793215, 49: 14.1421356}
    for step, size in table.items():
        assert schedule.step_size(step, steps) == pytest.approx(size, abs=1e-6)


def test_step_size_of_a_one_step_run_is_the_scale_factor():
    assert S.GuidanceSchedule(scale_factor=7.0).step_size(0, 1) == 7.0


@pytest.mark.parametrize(
    ("steps", "guided", "refinement"),
    [(20, 10, {0: 0.05, 4: 0.5, 8: 0.8}), (30, 15, {0: 0.05, 6: 0.5, 12: 0.8}), (50, 25, {0: 0.05, 10: 0.5, 20: 0.8})],
)
def test_percent_positions_at_several_run_lengths(steps: int, guided: int, refinement: dict[int, float]):
    schedule = S.GuidanceSchedule()
    assert [schedule.is_guided(i, steps) for i in range(steps)] == [i < guided for i in range(steps)]
    assert {i: schedule.refinement_threshold(i, steps) for i in range(steps)} == {
        i: refinement.get(i) for i in range(steps)
    }


def test_percent_rounds_half_up():
    assert S.percent_to_step(50.0, 25) == 13  # 12.5; Python's round() would give 12
    assert S.percent_to_step(10.0, 25) == 3  # 2.5
    assert S.percent_to_step(40.0, 21) == 8  # 8.4
    assert S.percent_to_step(20.0, 23) == 5  # 4.6


def test_empty_window_guides_and_refines_nothing():
    schedule = S.GuidanceSchedule(guided_percent=0.0)
    for steps in (1, 20, 50):
        assert not any(schedule.is_guided(i, steps) for i in range(steps))
        assert all(schedule.refinement_threshold(i, steps) is None for i in range(steps))


def test_full_window_guides_every_step():
    schedule = S.GuidanceSchedule(guided_percent=100.0)
    assert all(schedule.is_guided(i, 50) for i in range(50))


def test_refinement_outside_the_window_is_dropped():
    assert S.GuidanceSchedule(guided_percent=30.0).refinement_thresholds(50) == {0: 0.05, 10: 0.5}


def test_later_point_wins_when_two_round_to_one_step():
    # At 3 steps, 20 % -> 0.6 -> 1 and 40 % -> 1.2 -> 1; the window 50 % -> 1.5 -> 2.
    assert S.GuidanceSchedule().refinement_thresholds(3) == {0: 0.05, 1: 0.8}


def test_steps_outside_the_run_are_rejected():
    schedule = S.GuidanceSchedule()
    for step, steps in [(50, 50), (-1, 50)]:
        with pytest.raises(ValueError, match="outside"):
            schedule.is_guided(step, steps)
        with pytest.raises(ValueError, match="outside"):
            schedule.step_size(step, steps)
    with pytest.raises(ValueError, match="at least one step"):
        schedule.guided_steps(0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"guided_percent": 101.0},
        {"guided_percent": -1.0},
        {"refinement_points": (S.RefinementPoint(20.0, 0.5), S.RefinementPoint(0.0, 0.05))},
        {"refinement_points": (S.RefinementPoint(20.0, 0.5), S.RefinementPoint(20.0, 0.8))},
        {"refinement_points": (S.RefinementPoint(120.0, 0.5),)},
        {"max_refinement_steps": -1},
        {"scale_factor": -1.0},
    ],
)
def test_invalid_schedules_are_rejected(kwargs: dict):
    with pytest.raises(ValueError):
        S.GuidanceSchedule(**kwargs)


def test_refinement_caps_per_point():
    points = (S.RefinementPoint(0.0, 0.05, max_steps=100), S.RefinementPoint(20.0, 0.2), S.RefinementPoint(40.0, 0.3))
    schedule = S.GuidanceSchedule(refinement_points=points, max_refinement_steps=50)
    assert [schedule.refinement_cap(i, 50) for i in (0, 10, 20, 5)] == [100, 50, 50, 50]
    assert schedule.refinement_thresholds(50) == {0: 0.05, 10: 0.2, 20: 0.3}
    with pytest.raises(ValueError, match="caps must be >= 0"):
        S.GuidanceSchedule(refinement_points=(S.RefinementPoint(0.0, 0.1, max_steps=-1),))


@pytest.mark.parametrize("percents,thresholds,setting,message", [
    ("0, 20, x", "0.05, 0.5, 0.8", "percents", "refinement percents must be comma-separated numbers"),
    ("0, 20, 40", "0.05, 0.5, high", "thresholds", "refinement thresholds must be comma-separated numbers"),
    ("0, 20, 40", "0.05, 0.5", "thresholds", "3 refinement percents but 2 thresholds"),
])
def test_unreadable_refinement_settings_name_the_setting_at_fault(percents, thresholds, setting, message):
    with pytest.raises(S.RefinementInputError, match=message) as raised:
        S.parse_refinement(percents, thresholds)
    assert raised.value.setting == setting
