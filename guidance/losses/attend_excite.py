"""Attend-and-Excite loss (Chefer et al., SIGGRAPH 2023), as the authors coded it (docs/methods.md, "A&E loss").

Per image: ``m_s = max_{y,x} Â_s`` for each subject's preprocessed map ``Â_s`` (§1.4-§1.5), and
``L = max_s max(0, 1 - m_s)``.

Shapes:
    maps      ``[B, H, W, T]`` head- and layer-averaged cross-attention probabilities.
    subjects  one sequence of token positions per subject (S subjects).
    loss      ``[B]``, each image's own loss; the engine sums them before autograd.
    maxima    ``[B, S]``, the per-subject maxima ``m_s``.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch

from . import maps as M


@dataclass(frozen=True)
class AttendExciteConfig:
    """Map preprocessing of the loss, with the authors' defaults (docs/methods.md, "A&E refinement and defaults").

    ``sigma`` keeps the authors' meaning: the coded kernel is a Gaussian of standard deviation ``sqrt(2)·sigma``
    (docs/methods.md SHARED-KERNEL). ``normalize_eot`` re-softmaxes over the prompt's word tokens only, as official A&E
    does for SD-2.1 (docs/methods.md A&E-EOT); the loss then needs the prompt's word positions.
    """

    smooth_attentions: bool = True
    kernel_size: int = 3
    sigma: float = 0.5
    normalize_eot: bool = False

    def __post_init__(self) -> None:
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd number, got {self.kernel_size}")
        if self.sigma <= 0:
            raise ValueError(f"sigma must be positive, got {self.sigma}")


class AttendExciteLoss(NamedTuple):
    """Per-image loss ``[B]`` and per-subject maxima ``[B, S]``."""

    loss: torch.Tensor
    maxima: torch.Tensor


def excite_maps(
    maps: torch.Tensor,
    subjects: Sequence[Sequence[int]],
    config: AttendExciteConfig = AttendExciteConfig(),
    word_positions: Sequence[int] | None = None,
    columns: Sequence[int] | None = None,
) -> torch.Tensor:
    """Each subject's re-softmaxed, optionally smoothed map ``Â_s``: ``[B, H, W, T] -> [B, S, H, W]`` (fp32).

    ``word_positions`` (positions of the prompt's word tokens, without ``<sot>``/``<eot>``) is required with
    ``normalize_eot`` and ignored otherwise. ``columns``: the re-softmax columns without ``normalize_eot``
    (default: each CLIP chunk's ``[1:-1]``; T5 sequences pass theirs, see ``SubjectTokens.attention_columns``).
    """
    if not subjects:
        raise ValueError("Attend-and-Excite needs at least one subject")
    columns = None if columns is None else torch.tensor(columns)
    if config.normalize_eot:
        if not word_positions:
            raise ValueError("normalize_eot needs the prompt's word token positions")
        columns = M.prompt_token_columns(word_positions)
    kernel = M.gaussian_kernel(config.kernel_size, config.sigma) if config.smooth_attentions else None
    return M.subject_maps(maps.float(), subjects, columns=columns, kernel=kernel)


def attend_excite_loss(
    maps: torch.Tensor,
    subjects: Sequence[Sequence[int]],
    config: AttendExciteConfig = AttendExciteConfig(),
    word_positions: Sequence[int] | None = None,
    columns: Sequence[int] | None = None,
) -> AttendExciteLoss:
    """``L = max_s max(0, 1 - m_s)`` per image: ``[B, H, W, T] -> loss [B], maxima [B, S]``.

    A loss of exactly 0 (every subject reaches 1) is a zero tensor; the reference returns the int 0 there and
    skips the update (docs/methods.md A&E-ZERO). The gradient reaches only the weakest subject's arg-max pixel and,
    through smoothing, its neighbourhood. ``word_positions`` and ``columns`` as in :func:`excite_maps`.
    """
    maxima = excite_maps(maps, subjects, config, word_positions, columns).amax(dim=(-2, -1))
    per_subject = torch.relu(1.0 - maxima)
    # max(dim) sends the gradient to one subject on ties, like the reference's Python max over tensors.
    return AttendExciteLoss(loss=per_subject.max(dim=-1).values, maxima=maxima)


def needs_refinement(loss: torch.Tensor, threshold: float) -> torch.Tensor:
    """A&E's refinement criterion: ``loss > max(0, 1 - threshold)``, per image ``[B] -> [B]`` bool (§1.6)."""
    return loss > max(0.0, 1.0 - threshold)
