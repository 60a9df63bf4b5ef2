"""Attend-and-Excite as a guidance term: excite the most neglected subject's strongest attention (Chefer et al.
2023; docs/methods.md, Attend-and-Excite)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..engine.schedule import GuidanceSchedule
from ..engine.spec import GuidanceSpec, TermInputs
from ..losses.attend_excite import AttendExciteConfig, attend_excite_loss, needs_refinement
from ..subjects.tokens import SubjectTokens


@dataclass(frozen=True)
class AttendExciteTerm:
    """``L = max(0, 1 - min_s max A_s)`` per image on the latent/4 maps; refines while ``L > 1 - threshold``."""

    subjects: tuple[tuple[int, ...], ...]
    word_positions: tuple[int, ...]
    config: AttendExciteConfig = AttendExciteConfig()
    weight: float = 1.0
    columns: tuple[int, ...] | None = None  # re-softmax columns (None: each CLIP chunk's [1:-1])
    levels: ClassVar[tuple[int, ...]] = ()

    def evaluate(self, inputs: TermInputs) -> Any:
        return attend_excite_loss(inputs.maps, self.subjects, self.config, self.word_positions, self.columns)

    def unmet(self, result: Any, threshold: float) -> torch.Tensor:
        return needs_refinement(result.loss, threshold)


def attend_and_excite(tokens: SubjectTokens, schedule: GuidanceSchedule,
                      config: AttendExciteConfig = AttendExciteConfig(), weight: float = 1.0) -> GuidanceSpec:
    """An Attend-and-Excite guidance; the paper's schedule is :class:`GuidanceSchedule`'s default."""
    term = AttendExciteTerm(tokens.subject_positions, tokens.word_positions, config, weight, tokens.loss_columns)
    return GuidanceSpec(tokens, (term,), (schedule,))
