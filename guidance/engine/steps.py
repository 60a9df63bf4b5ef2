"""Which sampling step a model call belongs to: one rule for latent guidance, recording and Attention Regulation.

A step *starts* at the first model call at exactly the step's own noise level ``sigmas[i]`` once the sampler has
reported step ``i - 1`` done (its callback); every later call belongs to that step until the next one starts. The
match is exact on purpose: samplers pass the schedule's value itself at a step start, while an evaluation inside a
step can land within rounding of the next noise level (dpmpp_2s_ancestral's midpoint with eta 1 is mathematically
``sigmas[i + 1]``). So a sampler's
extra evaluations inside a step (dpm_2's midpoint, heunpp2's third evaluation) belong to the step they are taken in.
Some samplers report a step before their corrector evaluates the model at the *next* step's noise level (heun): the
clock is told how many such calls follow each report, and those do not start the next step.
"""
from __future__ import annotations

from collections.abc import Sequence


class StepClock:
    """The step index of one sampling run over the schedule ``sigmas`` (``steps + 1`` noise levels, last 0).

    ``corrector_calls``: model calls the sampler makes at the next step's noise level after reporting a step.
    """

    def __init__(self, sigmas: Sequence[float], corrector_calls: int = 0) -> None:
        self.sigmas = list(sigmas)
        self.corrector_calls = corrector_calls
        self.step = 0  # the step the latest call belongs to
        self._reported = 0  # steps the sampler reported done
        self._started = -1  # the latest step that started
        self._pending_correctors = 0

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1

    def finish_step(self) -> None:
        """The sampler reported a finished step (its callback)."""
        self._reported += 1
        self._pending_correctors = self.corrector_calls

    def starts_step(self, sigma: float) -> bool:
        """Take note of a model call at ``sigma``; True when it starts a step (:attr:`step` is then that step)."""
        candidate = self._reported
        if candidate <= self._started or candidate >= self.steps:
            return False
        if sigma != self.sigmas[candidate]:
            return False
        if self._pending_correctors and candidate > 0:
            self._pending_correctors -= 1
            return False
        self._started = self.step = candidate
        return True
