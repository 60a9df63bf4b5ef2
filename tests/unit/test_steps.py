"""The one step rule: which sampling step a model call belongs to and which call starts it."""
from attention_guidance.guidance.engine.steps import StepClock

SIGMAS = [14.6, 5.0, 1.0, 0.0]


def calls(clock, events):
    """Feed ``events`` (a noise level per model call, or "report" for the sampler's step callback); returns, per
    call, (step it belongs to, whether it started the step)."""
    seen = []
    for event in events:
        if event == "report":
            clock.finish_step()
        else:
            started = clock.starts_step(event)
            seen.append((clock.step, started))
    return seen


def test_one_call_per_step():
    assert calls(StepClock(SIGMAS), [14.6, "report", 5.0, "report", 1.0, "report"]) == [
        (0, True), (1, True), (2, True)]


def test_a_midpoint_after_the_report_belongs_to_the_step_it_is_taken_in():
    assert calls(StepClock(SIGMAS), [14.6, "report", 8.5, 5.0, "report", 2.2, 1.0, "report"]) == [
        (0, True), (0, False), (1, True), (1, False), (2, True)]


def test_a_corrector_at_the_next_noise_level_does_not_start_the_next_step():
    heun = [14.6, "report", 5.0, 5.0, "report", 1.0, 1.0, "report"]
    assert calls(StepClock(SIGMAS, corrector_calls=1), heun) == [
        (0, True), (0, False), (1, True), (1, False), (2, True)]
    assert calls(StepClock(SIGMAS), heun)[1] == (1, True)  # without the sampler's corrector count it would


def test_a_step_starts_only_at_its_own_noise_level_and_only_once():
    clock = StepClock(SIGMAS)
    assert calls(clock, [15.2, 14.6, 14.6, "report", 5.0000001]) == [(0, False), (0, True), (0, False), (0, False)]
    assert calls(clock, [5.0]) == [(1, True)]  # exactly the schedule's value, not one within rounding of it


def test_no_step_starts_before_the_previous_one_was_reported_or_after_the_last():
    clock = StepClock(SIGMAS)
    assert calls(clock, [14.6, 5.0, "report", "report", "report", "report", 0.0]) == [
        (0, True), (0, False), (0, False)]
