"""A-STAR segregation and retention losses (Agarwal et al., ICCV 2023, Eqs. 2-4; docs/methods.md, "A-STAR").

There is no authors' code: the losses are literal transcriptions of the paper's equations, and everything the
paper leaves open follows the project choices of docs/methods.md, "A-STAR project choices".

Shapes:
    maps      ``[B, H, W, T]`` head- and layer-averaged cross-attention of the latent/4 layers.
    subjects  one sequence of token positions per concept (``S`` concepts).
    concepts  ``[B, S, H, W]`` per-concept maps after preprocessing.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from ..subjects.layout import LayoutGrid
from . import maps as M

Preprocessing = Literal["ae", "raw"]
Binarisation = Literal["half_max", "mean", "minmax_0.5"]


@dataclass(frozen=True)
class AStarConfig:
    """A-STAR settings (project choices, docs/methods.md, "A-STAR project choices"; the paper fixes none of them).

    ``preprocessing``: ``"ae"`` runs A&E's pipeline (drop ``<sot>``/last slot, ×100 re-softmax, 3×3 smoothing);
    ``"raw"`` uses the attention probabilities of the concept's tokens as they are.

    ``binarisation``: how the retention target ``B`` is cut from the previous step's map. The paper asks for the
    "high-activation" pixels; ``"half_max"`` (``A >= 0.5·max A``, default) keeps exactly the peak region, whatever
    the map's overall level. ``"mean"`` (``A > mean A``) also keeps much of the background: on the fixture's "ae"
    maps it marks 41 and 53 pixels where ``half_max`` marks 4 and 3. ``"minmax_0.5"``
    (``(A - min)/(max - min) >= 0.5``) equals ``half_max`` when the minimum is about 0, as after the re-softmax.

    The latent update follows A&E's guided window and step size, without refinement
    (:func:`~..methods.astar.paper_schedule`).
    """

    preprocessing: Preprocessing = "ae"
    binarisation: Binarisation = "half_max"
    kernel_size: int = 3
    sigma: float = 0.5

    def __post_init__(self) -> None:
        if self.preprocessing not in ("ae", "raw"):
            raise ValueError(f"AStarConfig.preprocessing must be 'ae' or 'raw', got {self.preprocessing!r}")
        if self.binarisation not in ("half_max", "mean", "minmax_0.5"):
            raise ValueError(
                f"AStarConfig.binarisation must be 'half_max', 'mean' or 'minmax_0.5', got {self.binarisation!r}"
            )


@dataclass(frozen=True)
class AStarResult:
    """``loss [B]`` (Eq. 4), ``segregation [B]`` (Eq. 2), ``retention [B]`` (Eq. 3, 0 without any target);
    ``concepts [B, S, H, W]``: this step's maps, detached, to pass as ``previous`` at the next guided step;
    ``targets [B, S, H, W]``: the ``B`` used (undefined where ``retained`` is False); ``retained [S]``: concepts
    that had a retention target."""

    loss: torch.Tensor
    segregation: torch.Tensor
    retention: torch.Tensor
    concepts: torch.Tensor
    targets: torch.Tensor
    retained: torch.Tensor


def concept_maps(
    maps: torch.Tensor,
    subjects: Sequence[Sequence[int]],
    config: AStarConfig = AStarConfig(),
    columns: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-concept maps ``[B, H, W, T] -> [B, S, H, W]``; several token pieces of one concept are summed."""
    if not subjects:
        raise ValueError("A-STAR needs at least one concept")
    if config.preprocessing == "ae":
        return M.subject_maps(maps.float(), subjects, columns, M.gaussian_kernel(config.kernel_size, config.sigma))
    return torch.stack([maps[..., list(positions)].float().sum(dim=-1) for positions in subjects], dim=1)


def segregation_loss(concepts: torch.Tensor) -> torch.Tensor:
    """Eq. 2: ``Σ_{m>n} Σ_ij min(A^m, A^n) / Σ_ij (A^m + A^n)`` over all concept pairs: ``[B, S, H, W] -> [B]``.

    Each ratio lies in ``[0, ½]``; identical maps give ½. Fewer than two concepts give 0.
    """
    first, second = torch.triu_indices(concepts.shape[1], concepts.shape[1], offset=1, device=concepts.device)
    a, b = concepts[:, first], concepts[:, second]
    ratios = torch.minimum(a, b).sum(dim=(-2, -1)) / (a + b).sum(dim=(-2, -1))
    return ratios.sum(dim=1)


def retention_terms(concepts: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Eq. 3 per concept: ``1 - Σ_ij min(A, B) / Σ_ij (A + B)``: ``[B, S, H, W], [B or 1, S, H, W] -> [B, S]``.

    ``targets`` are binary and carry no gradient. Even perfect retention leaves ``≥ ½`` because ``A ≤ 1``.
    """
    targets = targets.detach().to(concepts.dtype)
    overlap = torch.minimum(concepts, targets).sum(dim=(-2, -1))
    return 1 - overlap / (concepts + targets).sum(dim=(-2, -1))


def binarize(maps: torch.Tensor, rule: Binarisation) -> torch.Tensor:
    """Binary high-activation mask of each map, ``[..., H, W] -> [..., H, W]`` of 0./1., without gradient.

    ``half_max``: ``A >= 0.5·max A``; ``mean``: ``A > mean A``; ``minmax_0.5``: ``(A - min)/(max - min) >= 0.5``
    (a constant map gives all ones).
    """
    maps = maps.detach()
    if rule == "half_max":
        mask = maps >= 0.5 * maps.amax(dim=(-2, -1), keepdim=True)
    elif rule == "mean":
        mask = maps > maps.mean(dim=(-2, -1), keepdim=True)
    elif rule == "minmax_0.5":
        low, high = maps.amin(dim=(-2, -1), keepdim=True), maps.amax(dim=(-2, -1), keepdim=True)
        mask = ((maps - low) / (high - low) >= 0.5) | (high == low)
    else:
        raise ValueError(f"unknown binarisation rule {rule!r}; use 'half_max', 'mean' or 'minmax_0.5'")
    return mask.to(maps.dtype)


def astar_loss(
    maps: torch.Tensor,
    subjects: Sequence[Sequence[int]],
    previous: torch.Tensor | None = None,
    config: AStarConfig = AStarConfig(),
    layout: LayoutGrid | None = None,
    columns: torch.Tensor | None = None,
) -> AStarResult:
    """Eq. 4: ``L = L_seg + L_ret`` per image.

    maps: ``[B, H, W, T]`` of the current guided step. previous: ``[B, S, H, W]``, the ``concepts`` of the previous
    guided step's result, or None at the first guided step. The retention target of each concept is its
    ``layout`` mask if given, else ``binarize(previous)``; a concept with neither (no layout mask at the first
    guided step) has no retention term, so without a layout the first step is ``L = L_seg`` only.
    columns: re-softmax columns of the "ae" preprocessing (default: each chunk's ``[1:-1]``).
    """
    concepts = concept_maps(maps, subjects, config, columns)
    batch, count = concepts.shape[:2]
    targets = torch.zeros_like(concepts)
    retained = torch.zeros(count, dtype=torch.bool, device=concepts.device)
    if previous is not None:
        if previous.shape != concepts.shape:
            raise ValueError(
                f"previous maps {tuple(previous.shape)} do not match this step's {tuple(concepts.shape)}"
            )
        targets = binarize(previous, config.binarisation)
        retained = torch.ones_like(retained)
    if layout is not None:
        if len(layout.given) != count or layout.masks.shape[-2:] != concepts.shape[-2:]:
            raise ValueError(
                f"layout masks {tuple(layout.masks.shape)} do not fit {count} concepts on a "
                f"{tuple(concepts.shape[-2:])} grid"
            )
        given = torch.tensor(layout.given, device=concepts.device)
        user = layout.masks.to(device=concepts.device, dtype=concepts.dtype).expand(batch, -1, -1, -1)
        targets = torch.where(given[None, :, None, None], user, targets)
        retained = retained | given
    segregation = segregation_loss(concepts)
    retention = (retention_terms(concepts, targets) * retained).sum(dim=1)
    return AStarResult(segregation + retention, segregation, retention, concepts.detach(), targets, retained)
