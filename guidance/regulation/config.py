"""Attention Regulation settings with the authors' internal defaults (docs/methods.md, "AR defaults")."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..engine.schedule import percent_to_step

RegulationMode = Literal["default", "reference"]
MODES: tuple[RegulationMode, ...] = ("default", "reference")


@dataclass(frozen=True)
class RegulationConfig:
    """Settings of the logit edit (Eqs. 9, 13-15), defaults as coded by the authors.

    ``mode``:
        ``"default"``: edited rows are a plain softmax over all tokens (they sum to 1), the edited logits stay
        fp32, and each image keeps its own best iterate, so an image's edit does not depend on its batch.
        ``"reference"``: the coded behaviour: the unedited ``<sot>``/``<eot>`` probabilities are written back
        after the softmax (rows no longer sum to 1, docs/methods.md AR-SOT-EOT), the edited logits are rounded to fp16
        (AR-FP16), and one best iterate is chosen on the mean loss of all rows of the layer call (AR-ROWS).

    ``ema_decay`` is the weight of the previous step's bias (the authors' ``decay``). The coverage term aims the
    mean attention of each of the S targets at ``min(target_share_cap, target_share · S) / S``.
    ``edit_percent``: the edit runs on the first ``edit_percent`` % of the sampling steps, rounded as every guided
    window (:func:`~..engine.schedule.percent_to_step`; the authors edit 25 of 50 steps). ``edit_steps``, when set,
    is a fixed number of first steps instead, as the node's first version took it (kept for saved workflows).
    """

    mode: RegulationMode = "default"
    learning_rate: float = 100.0
    iterations: int = 20
    ema_decay: float = 0.25
    global_decay: float = 0.99
    gamma: float = 1.0
    delta: float = 80.0
    epsilon: float = 0.09
    quantile: float = 0.9
    quantile_target: float = 0.9
    target_share: float = 0.2
    target_share_cap: float = 1.0
    edit_percent: float = 50.0
    edit_steps: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.iterations < 1:
            raise ValueError(f"iterations must be at least 1, got {self.iterations}")
        if not 0.0 <= self.ema_decay <= 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1], got {self.ema_decay}")
        if not 0.0 < self.quantile < 1.0:
            raise ValueError(f"quantile must lie in (0, 1), got {self.quantile}")
        if not 0.0 <= self.edit_percent <= 100.0:
            raise ValueError(f"edit_percent must lie in [0, 100], got {self.edit_percent}")
        if self.edit_steps is not None and self.edit_steps < 0:
            raise ValueError(f"edit_steps must not be negative, got {self.edit_steps}")

    @property
    def edits(self) -> bool:
        """Whether any step is edited."""
        return (self.edit_percent if self.edit_steps is None else self.edit_steps) > 0

    def edited_steps(self, steps: int) -> int:
        """How many first steps of a ``steps``-step run are edited."""
        return percent_to_step(self.edit_percent, steps) if self.edit_steps is None else self.edit_steps

    def total_share(self, target_count: int) -> float:
        """``τ = min(1, 0.2 · S)``: the attention mass all S targets should share on average."""
        return min(self.target_share_cap, self.target_share * target_count)
