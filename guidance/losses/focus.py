"""FOCUS's group Jensen-Shannon loss (docs/methods.md, "FOCUS"): the tokens of one subject should attend to the same
place, the subjects to different places.

Every token map is treated as a distribution over pixels. ``JSD(Q_1..Q_K)`` is the generalised Jensen-Shannon
divergence with uniform weights, ``mean_k KL(Q̃_k || mean_j Q̃_j) / log K``, taken on sharpened distributions
``Q̃ = Q^p / Σ Q^p`` (FOCUS cubes them, p = 3: near-zero pixels would dominate the divergence otherwise); dividing by
``log K``, its largest value, puts it in [0, 1]. Per image:

* coherence: the mean over groups of two or more tokens of ``JSD(the group's token maps)`` (0 without such groups);
* separation: ``1 - JSD(the groups' mixtures)``, a group's mixture being the mean of its token maps (0 for one group);
* ``L = (coherence + separation) / 2``.

Maps are first blurred with a 3x3 Gaussian of standard deviation 1 (reflect padding), as FOCUS does.

Shapes: maps ``[B, H, W, T]``; groups: token positions per subject; results ``[B]``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch

from . import maps as M

EPSILON = 1e-10


@dataclass(frozen=True)
class FocusConfig:
    """``sharpening``: the power ``p`` (FOCUS: 3); ``blur``: the 3x3 Gaussian of standard deviation ``blur_sigma``
    (FOCUS: on, 1.0)."""

    sharpening: float = 3.0
    blur: bool = True
    blur_sigma: float = 1.0

    def __post_init__(self) -> None:
        if self.sharpening <= 0 or self.blur_sigma <= 0:
            raise ValueError(f"sharpening and blur_sigma must be positive, got {self.sharpening}, {self.blur_sigma}")


class FocusResult(NamedTuple):
    loss: torch.Tensor
    coherence: torch.Tensor
    separation: torch.Tensor


def gaussian_blur_kernel(size: int = 3, sigma: float = 1.0) -> torch.Tensor:
    """``[size, size]`` Gaussian of standard deviation ``sigma``, normalised to sum 1."""
    offsets = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    line = torch.exp(-offsets ** 2 / (2 * sigma ** 2))
    kernel = line[:, None] * line[None, :]
    return kernel / kernel.sum()


def group_divergence(distributions: torch.Tensor, sharpening: float) -> torch.Tensor:
    """Normalised generalised JSD of ``[B, K, N]`` non-negative maps (K >= 2) over N pixels: ``[B]`` in [0, 1]."""
    count = distributions.shape[1]
    if count < 2:
        raise ValueError("a divergence needs at least two distributions")
    sharpened = distributions.clamp_min(0) ** sharpening
    sharpened = sharpened / sharpened.sum(dim=-1, keepdim=True).clamp_min(EPSILON)
    mixture = sharpened.mean(dim=1, keepdim=True)
    divergence = (sharpened * ((sharpened + EPSILON).log() - (mixture + EPSILON).log())).sum(dim=-1).mean(dim=1)
    return divergence / math.log(count)


def focus_loss(maps: torch.Tensor, groups: Sequence[Sequence[int]], config: FocusConfig = FocusConfig()
               ) -> FocusResult:
    """FOCUS's loss per image on ``maps`` ``[B, H, W, T]`` for ``groups`` of token positions (one per subject)."""
    if not groups or any(not group for group in groups):
        raise ValueError("FOCUS needs at least one subject, each with at least one token")
    positions = [position for group in groups for position in group]
    tokens = maps[..., positions].float().permute(0, 3, 1, 2)  # [B, K, H, W]
    if config.blur:
        tokens = M.smooth(tokens, gaussian_blur_kernel(3, config.blur_sigma))
    tokens = tokens.flatten(2)
    batch = maps.shape[0]
    coherence, separation = tokens.new_zeros(batch), tokens.new_zeros(batch)
    starts = [sum(len(group) for group in groups[:index]) for index in range(len(groups))]
    members = [tokens[:, start:start + len(group)] for start, group in zip(starts, groups)]
    several = [member for member in members if member.shape[1] > 1]
    if several:
        coherence = torch.stack([group_divergence(member, config.sharpening) for member in several]).mean(dim=0)
    if len(members) > 1:
        mixtures = torch.stack([member.mean(dim=1) for member in members], dim=1)
        separation = 1 - group_divergence(mixtures, config.sharpening)
    return FocusResult((coherence + separation) / 2, coherence, separation)
